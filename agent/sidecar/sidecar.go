// Package sidecar is the intercept sidecar: it runs in the target pod, next
// to the original container, and receives the container port's inbound TCP
// (redirected by the rules of agent/iptables). Each connection goes to a
// workstation through the gateway's relay, or to the original container:
//
//   - a full route: the whole connection is relayed to the workstation;
//   - isolated routes: HTTP is proxied request by request, on the route-as
//     header; anything that is not HTTP goes to the original;
//   - no route, or a workstation that does not answer: the original.
//
// An intercept must never take a service down: every failure to reach a
// workstation before it answered ends at the original container.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/internal/netlimit"
	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/splice"
)

// RouteSource gives the routes the sidecar follows.
type RouteSource interface {
	// Current returns the latest route table; the zero table means no routes.
	Current() api.RouteTable
}

// Config configures a Sidecar.
type Config struct {
	Listener      net.Listener // redirected connections (required); Run closes it
	ProbeListener net.Listener // nil = none; kubelet probes, always passed to Original; Run closes it
	Original      string       // the original container, e.g. "127.0.0.1:8080" (required)
	Routes        RouteSource  // the current routes (required)
	// Dial opens a relayed connection to a Route's Target through the
	// gateway, e.g. GatewayClient.Dial (required). It must give up when ctx ends.
	Dial         func(ctx context.Context, target string) (net.Conn, error)
	DialTimeout  time.Duration         // 0 = 2s: a workstation not reached within this is skipped (pass-through)
	SniffTimeout time.Duration         // 0 = 3s: isolated mode waits this long for a request line before passing through
	RelayCoolOff time.Duration         // 0 = 1s: after a failed relay dial, the target is skipped (pass-through) this long
	Log          *slog.Logger          // nil discards
	Registerer   prometheus.Registerer // nil = no metrics
	// Sightings reports a request to the gateway's open traces
	// (GatewayClient.Sightings; trace.go); nil = the sidecar takes no
	// part in traces.
	Sightings func(ctx context.Context, routeAs string) error
}

// Sidecar routes redirected connections; see the package documentation.
type Sidecar struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	httpLn  *chanListener
	srv     *http.Server
	errLog  *log.Logger    // net/http's own complaints, at debug level
	cluster http.Handler   // reverse proxy to the original container
	direct  protoTransport // HTTP to the original container
	relay   protoTransport // HTTP to workstations, over relayed connections
	conns   sync.WaitGroup // one per accepted connection
	dialer  net.Dialer     // to the original container
	breaker *breaker       // relay targets that just failed
	trace   *traceReporter // reports for header-propagation traces
}

const (
	defaultDialTimeout  = 2 * time.Second
	defaultSniffTimeout = 3 * time.Second
	defaultRelayCoolOff = time.Second
	originalDialTimeout = 5 * time.Second
)

// readHeaderTimeout bounds how long HTTP mode waits for a request's header
// (after the sniffed request line); a client that sends part of one is cut
// then. A variable so tests can shorten it.
var readHeaderTimeout = 30 * time.Second

// New checks cfg and builds a Sidecar; Run starts it.
func New(cfg Config) (*Sidecar, error) {
	switch {
	case cfg.Listener == nil:
		return nil, errors.New("sidecar: Listener is required")
	case cfg.Routes == nil:
		return nil, errors.New("sidecar: Routes is required")
	case cfg.Dial == nil:
		return nil, errors.New("sidecar: Dial is required")
	}
	if _, _, err := net.SplitHostPort(cfg.Original); err != nil {
		return nil, fmt.Errorf("sidecar: original container address %q: %w", cfg.Original, err)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	if cfg.SniffTimeout <= 0 {
		cfg.SniffTimeout = defaultSniffTimeout
	}
	if cfg.RelayCoolOff <= 0 {
		cfg.RelayCoolOff = defaultRelayCoolOff
	}
	logger := cfg.Log
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = obs.Component(logger, "sidecar")
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("sidecar: %w", err)
	}
	s := &Sidecar{
		cfg:     cfg,
		log:     logger,
		m:       m,
		httpLn:  newChanListener(cfg.Listener.Addr()),
		dialer:  net.Dialer{Timeout: originalDialTimeout},
		breaker: newBreaker(cfg.RelayCoolOff),
	}
	s.trace = newTraceReporter(cfg.Sightings, logger)
	s.errLog = slog.NewLogLogger(logger.Handler(), slog.LevelDebug)
	s.direct = newProtoTransport(func(ctx context.Context, addr string) (net.Conn, error) {
		return s.dialer.DialContext(ctx, "tcp", addr)
	})
	s.cluster = s.clusterProxy(s.direct)
	s.relay = newProtoTransport(s.dialRelay)
	return s, nil
}

// Run serves until ctx ends or a listener fails, then closes the listeners
// and every connection, and returns once all of its goroutines have exited.
// A Sidecar runs once.
func (s *Sidecar) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.srv = &http.Server{
		Handler:     http.HandlerFunc(s.serveHTTP),
		Protocols:   new(http.Protocols),
		BaseContext: func(net.Listener) context.Context { return ctx },
		ErrorLog:    s.errLog,
		// A slow or stalled header ties up a goroutine and a connection.
		ReadHeaderTimeout: readHeaderTimeout,
		// Idle keep-alive connections of HTTP mode; the original container
		// applies its own limits behind us.
		IdleTimeout: 5 * time.Minute,
	}
	s.srv.Protocols.SetHTTP1(true)
	s.srv.Protocols.SetUnencryptedHTTP2(true)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.srv.Serve(s.httpLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("sidecar http: %w", err)
		}
		return nil
	})
	g.Go(func() error { return s.acceptLoop(gctx, s.cfg.Listener, s.handle) })
	if s.cfg.ProbeListener != nil {
		g.Go(func() error { return s.acceptLoop(gctx, s.cfg.ProbeListener, s.handleProbe) })
	}
	g.Go(func() error {
		<-gctx.Done()
		// Shutdown order: stop accepting, then close HTTP-mode connections
		// (the server's), then raw ones (their handlers watch ctx).
		_ = s.cfg.Listener.Close()
		if s.cfg.ProbeListener != nil {
			_ = s.cfg.ProbeListener.Close()
		}
		_ = s.srv.Close()
		cancel()
		return nil
	})
	err := g.Wait()
	s.conns.Wait()
	s.direct.closeIdle()
	s.relay.closeIdle()
	return err
}

// acceptLoop hands every connection of ln to handle, in its own goroutine.
func (s *Sidecar) acceptLoop(ctx context.Context, ln net.Listener, handle func(context.Context, net.Conn)) error {
	ln = netlimit.Listener(ln, netlimit.MaxSidecar, netlimit.Refused(s.cfg.Registerer, "sidecar"))
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if isTemporary(err) {
				// Out of file descriptors and the like: wait, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "addr", ln.Addr().String(), "err", err, "delay", backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("sidecar accept on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		s.conns.Go(func() { handle(ctx, c) })
	}
}

// handle routes one redirected connection on a snapshot of the routes.
func (s *Sidecar) handle(ctx context.Context, c net.Conn) {
	table := s.cfg.Routes.Current()
	if r, ok := table.Full(); ok {
		up, err := s.dialRelay(ctx, r.Target)
		if err != nil {
			if !errors.Is(err, errCoolingOff) {
				s.log.Warn("workstation unreachable; passing the connection to the original", "target", r.Target, "holder", r.Holder, "err", err)
			}
			s.passThrough(ctx, c, nil, reasonDialFailed)
			return
		}
		s.m.connections.WithLabelValues(routeLocal).Inc()
		s.join(ctx, c, up)
		return
	}
	if len(table.Routes) == 0 {
		s.passThrough(ctx, c, nil, reasonNoRoute)
		return
	}
	head, isHTTP := sniff(c, s.cfg.SniffTimeout)
	if !isHTTP {
		s.passThrough(ctx, c, head, reasonNotHTTP)
		return
	}
	s.serveHTTPConn(ctx, c, head)
}

// handleProbe passes a kubelet probe to the original, whatever the routes.
func (s *Sidecar) handleProbe(ctx context.Context, c net.Conn) {
	s.passThrough(ctx, c, nil, "")
}

// passThrough relays c to the original container, head (bytes already read
// from c) first. reason "" counts nothing (probes).
func (s *Sidecar) passThrough(ctx context.Context, c net.Conn, head []byte, reason string) {
	if reason != "" {
		s.m.passthrough.WithLabelValues(reason).Inc()
		s.m.connections.WithLabelValues(routeCluster).Inc()
	}
	up, err := s.dialer.DialContext(ctx, "tcp", s.cfg.Original)
	if err != nil {
		s.log.Warn("original container unreachable", "addr", s.cfg.Original, "err", err)
		_ = c.Close()
		return
	}
	if len(head) > 0 {
		if _, err := up.Write(head); err != nil {
			_ = up.Close()
			_ = c.Close()
			return
		}
	}
	s.join(ctx, c, up)
}

// errCoolingOff skips a relay target whose last dial failed moments ago.
var errCoolingOff = errors.New("skipped: its last relay dial failed moments ago")

// dialRelay dials a workstation's target through the gateway within
// DialTimeout, unless the breaker says the target just failed.
func (s *Sidecar) dialRelay(ctx context.Context, target string) (net.Conn, error) {
	if !s.breaker.allow(target) {
		return nil, &relayDialError{target: target, err: errCoolingOff}
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	c, err := s.cfg.Dial(ctx, target)
	s.breaker.done(target, err == nil)
	if err != nil {
		s.m.relayErrors.Inc()
		return nil, &relayDialError{target: target, err: err}
	}
	return c, nil
}

// relayDialError marks a failure to reach a workstation, so HTTP mode can
// tell it from a failure after the workstation answered.
type relayDialError struct {
	target string
	err    error
}

func (e *relayDialError) Error() string {
	return fmt.Sprintf("relay dial %s: %v", e.target, e.err)
}

func (e *relayDialError) Unwrap() error { return e.err }

// join relays c to up until both ends finish or ctx ends, and closes
// both (splice.Relay: half-closes pass on, an error ends both).
func (s *Sidecar) join(ctx context.Context, c, up net.Conn) {
	if _, err := splice.Relay(ctx, c, up); err != nil && ctx.Err() == nil {
		s.log.Debug("relay ended", "peer", c.RemoteAddr().String(), "upstream", up.RemoteAddr().String(), "err", err)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}
