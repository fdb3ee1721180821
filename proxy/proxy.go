// Package proxy serves SOCKS5 (RFC 1928/1929) and HTTP proxies whose
// destinations are reached through an injected Dialer, so programs that know
// nothing about bridgetun can use the netstack (no-root) tunnel.
//
// Names are resolved by the proxy (socks5h semantics) with the injected
// Resolver; the Dialer only ever sees IP literals.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"

	"github.com/bridgetun/bridgetun/internal/netlimit"
	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/internal/splice"
)

// Dialer is how the proxy reaches destinations (netstack client's DialContext
// in production). address is always an IP literal with a port.
type Dialer func(ctx context.Context, network, address string) (net.Conn, error)

// Resolver turns a host name into IPv4 addresses (the split-DNS resolver in
// production).
type Resolver func(ctx context.Context, host string) ([]netip.Addr, error)

// Config holds a Server's dependencies.
type Config struct {
	Dial     Dialer                // required
	Resolve  Resolver              // nil = names are refused (host unreachable)
	Deny     func(netip.Addr) bool // nil = allow all; refused destinations get SOCKS reply 0x02 / HTTP 403
	Username string                // "" with Password "" = no auth (loopback listeners only)
	Password string
	Log      *slog.Logger // nil discards
	// Registerer receives bridgetun_proxy_connections_total{proto,result};
	// nil = none.
	Registerer prometheus.Registerer
}

// Server is a SOCKS5 and HTTP proxy. One Server may listen on several
// addresses; Close stops all of them.
type Server struct {
	cfg       Config
	log       *slog.Logger
	metrics   *metrics
	transport *http.Transport // forwards plain HTTP requests

	ctx    context.Context // cancelled by Close; parent of every relay
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners []io.Closer // TCP listeners and HTTP servers
	wg        sync.WaitGroup
}

// Errors that map to protocol replies (SOCKS reply codes, HTTP statuses).
var (
	errDenied       = errors.New("destination not allowed")
	errUnresolvable = errors.New("host unreachable: cannot resolve name")
	errAuth         = errors.New("authentication failed")
)

// New returns a Server; it listens nowhere until ListenSOCKS or ListenHTTP.
func New(cfg Config) (*Server, error) {
	if cfg.Dial == nil {
		return nil, errors.New("new proxy: Config.Dial is required")
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("new proxy: %w", err)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:     cfg,
		log:     obs.Component(log, "proxy"),
		metrics: m,
		ctx:     ctx,
		cancel:  cancel,
	}
	s.transport = s.newTransport()
	return s, nil
}

// ListenSOCKS serves SOCKS5 on addr ("127.0.0.1:1080", port 0 picks one)
// and returns the bound address.
func (s *Server) ListenSOCKS(addr string) (net.Addr, error) {
	ln, err := s.listen("socks", addr)
	if err != nil {
		return nil, err
	}
	if !s.goTracked(func() { s.serveSOCKS(ln) }) {
		ln.Close()
		return nil, net.ErrClosed
	}
	return ln.Addr(), nil
}

// ListenHTTP serves an HTTP proxy (CONNECT and absolute-URI requests) on
// addr and returns the bound address.
func (s *Server) ListenHTTP(addr string) (net.Addr, error) {
	ln, err := s.listen("http", addr)
	if err != nil {
		return nil, err
	}
	hs := s.newHTTPServer()
	s.mu.Lock()
	s.listeners = append(s.listeners, hs)
	s.mu.Unlock()
	if !s.goTracked(func() { hs.Serve(ln) }) {
		ln.Close()
		return nil, net.ErrClosed
	}
	return ln.Addr(), nil
}

// Close stops the listeners and every in-flight relay, and returns once all
// goroutines the Server started have exited. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	ls := s.listeners
	s.listeners = nil
	s.mu.Unlock()

	// Order: cancel the context first so relays and dials unblock, then close
	// listeners so accept loops return, then wait.
	s.cancel()
	for _, l := range ls {
		l.Close()
	}
	s.wg.Wait()
	s.transport.CloseIdleConnections()
	return nil
}

// listen binds a TCP listener, refusing non-loopback addresses without
// credentials, and registers it for Close.
func (s *Server) listen(proto, addr string) (net.Listener, error) {
	if !s.authRequired() {
		if err := checkLoopback(addr); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("proxy: listen %s on %s: %w", proto, addr, err)
	}
	ln = netlimit.Listener(ln, netlimit.MaxProxy, netlimit.Refused(s.cfg.Registerer, "proxy_"+proto))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		ln.Close()
		return nil, fmt.Errorf("proxy: listen %s on %s: %w", proto, addr, net.ErrClosed)
	}
	s.listeners = append(s.listeners, ln)
	s.log.Info("proxy listening", "proto", proto, "addr", ln.Addr().String())
	return ln, nil
}

// checkLoopback fails unless addr's host is a loopback IP or "localhost".
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("proxy: listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("proxy: refusing to listen on %s without credentials: use a loopback address or set a username and password", addr)
}

func (s *Server) authRequired() bool { return s.cfg.Username != "" || s.cfg.Password != "" }

// goTracked runs f in a goroutine Close waits for; it reports false (and
// does not run f) once the Server is closed.
func (s *Server) goTracked(f func()) bool {
	if !s.enter() {
		return false
	}
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// enter registers one unit of work with the WaitGroup unless closed; the
// caller must call s.wg.Done when it finishes.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// closeOnDone closes c when the Server is closed; the returned func stops
// that and must be called when the caller is done with c.
func (s *Server) closeOnDone(c io.Closer) (stop func() bool) {
	return context.AfterFunc(s.ctx, func() { c.Close() })
}

// dialTCP resolves host (an IP literal or a name), applies Deny and dials
// the first permitted address that answers.
func (s *Server) dialTCP(ctx context.Context, host string, port uint16) (net.Conn, error) {
	addrs, err := s.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a, port).String()
		c, err := s.cfg.Dial(ctx, "tcp", ap)
		if err == nil {
			return c, nil
		}
		errs = append(errs, fmt.Errorf("dial tcp %s: %w", ap, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// resolve returns the permitted addresses for host, failing with errDenied
// when every address is denied and errUnresolvable when there are none.
func (s *Server) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip.Unmap()}
	} else {
		if s.cfg.Resolve == nil {
			return nil, fmt.Errorf("resolve %q: %w", host, errUnresolvable)
		}
		res, err := s.cfg.Resolve(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("resolve %q: %w: %w", host, errUnresolvable, err)
		}
		if len(res) == 0 {
			return nil, fmt.Errorf("resolve %q: no addresses: %w", host, errUnresolvable)
		}
		for _, a := range res {
			addrs = append(addrs, a.Unmap())
		}
	}
	if s.cfg.Deny == nil {
		return addrs, nil
	}
	allowed := addrs[:0:0]
	for _, a := range addrs {
		if !s.cfg.Deny(a) {
			allowed = append(allowed, a)
		}
	}
	if len(allowed) == 0 {
		return nil, fmt.Errorf("%s (%s): %w", host, addrs[0], errDenied)
	}
	return allowed, nil
}

// splitHostPort is net.SplitHostPort with a numeric port.
func splitHostPort(hostport string) (string, uint16, error) {
	host, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", ps, err)
	}
	return host, uint16(p), nil
}

// relay joins a client's connection c to its destination up until both
// ends finish or the Server is closed (splice.Relay: half-closes pass on,
// an error ends both).
func (s *Server) relay(c, up net.Conn) {
	if _, err := splice.Relay(s.ctx, c, up); err != nil && s.ctx.Err() == nil {
		s.log.Debug("relay ended", "dest", up.RemoteAddr().String(), "err", err)
	}
}
