// Package netlimit caps the connections a server holds at once, so a
// client (or a flood of them) cannot exhaust a process's file descriptors
// and goroutines: past the cap a new connection is closed at once (its
// client sees the connection end, not a hang) and counted.
//
// It differs from golang.org/x/net/netutil.LimitListener, which stops
// accepting at the cap and leaves new clients waiting in the kernel's
// backlog: here refusals are visible, both to the client and in a metric.
package netlimit

import (
	"net"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/internal/promreg"
)

// Caps of bridgetun's servers: generous for what each serves, small
// enough that a flood stops well before the process's limits.
const (
	MaxControl  = 256  // gateway control API: a workstation holds one or two
	MaxRelay    = 4096 // gateway relay: one per request relayed into a workstation
	MaxMetrics  = 64   // a Prometheus /metrics endpoint
	MaxSocket   = 64   // the session's socket API
	MaxProxy    = 1024 // each netstack-mode proxy listener: one per proxied connection
	MaxSidecar  = 8192 // an intercept sidecar: the Service's own traffic passes through it
	MaxLocalURL = 1024 // an isolated intercept's local URL
	MaxInbound  = 1024 // an intercept's inbound listener on the workstation: one per intercepted connection
)

// Listener wraps ln so that at most max accepted connections are open at
// once; a connection past that is closed as it is accepted and counted in
// refused (nil = not counted). Closing a connection frees its place.
func Listener(ln net.Listener, max int, refused prometheus.Counter) net.Listener {
	return &listener{Listener: ln, max: max, refused: refused}
}

// Refused returns the counter of connections refused by server's cap:
// bridgetun_connections_refused_total{server}, registered with reg (nil
// reg = nil counter, nothing counted).
func Refused(reg prometheus.Registerer, server string) prometheus.Counter {
	if reg == nil {
		return nil
	}
	vec, err := promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bridgetun_connections_refused_total",
		Help: "Connections a server closed as it accepted them because it already held its cap of open connections, by server.",
	}, []string{"server"}))
	if err != nil {
		return nil // a name clash with another collector: count nothing rather than fail a server
	}
	return vec.WithLabelValues(server)
}

type listener struct {
	net.Listener
	max     int
	refused prometheus.Counter

	mu   sync.Mutex
	open int
}

// Accept returns the next connection within the cap, closing those past it.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		ok := l.open < l.max
		if ok {
			l.open++
		}
		l.mu.Unlock()
		if ok {
			return wrap(c, l.release), nil
		}
		if l.refused != nil {
			l.refused.Inc() // first: a client that sees the close sees the count
		}
		_ = c.Close()
	}
}

func (l *listener) release() {
	l.mu.Lock()
	l.open--
	l.mu.Unlock()
}

// conn frees its place in the cap on its first Close. WatchedConn returns
// the connection it wraps, whose bytes it passes unchanged, so code that
// needs the socket itself (splice(2), SO_PEERCRED) can reach it.
type conn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// WatchedConn returns the accepted connection.
func (c *conn) WatchedConn() net.Conn { return c.Conn }

// halfConn is a conn whose connection can half-close (TCP, Unix).
type halfConn struct{ *conn }

// CloseWrite half-closes the connection.
func (c halfConn) CloseWrite() error { return c.Conn.(interface{ CloseWrite() error }).CloseWrite() }

// wrap returns c counted in the cap, able to half-close if c can.
func wrap(c net.Conn, release func()) net.Conn {
	w := &conn{Conn: c, release: release}
	if _, ok := c.(interface{ CloseWrite() error }); ok {
		return halfConn{w}
	}
	return w
}

// Unwrap returns the connection under this package's wrappers (any
// WatchedConn), or c itself.
func Unwrap(c net.Conn) net.Conn {
	for {
		u, ok := c.(interface{ WatchedConn() net.Conn })
		if !ok {
			return c
		}
		c = u.WatchedConn()
	}
}
