package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"
)

// ListenerName is the proxy's own name: "A bridgetun-dns." answers with the
// addresses it listens on and a PTR query for those addresses answers
// with this name, without asking anyone.
const ListenerName = "bridgetun-dns."

// ednsSize is the EDNS0 buffer size the proxy advertises, both to the
// resolvers it asks and to its clients (the DNS flag day 2020 value).
const ednsSize = 1232

// Server is the split resolver. It implements dns.Handler.
type Server struct {
	cfg        Config
	domain     string
	timeout    time.Duration
	log        *slog.Logger
	m          *metrics
	cache      *cache
	clusterDNS []string
	upstreams  []string
	dialClust  dialFunc
	dialUp     dialFunc

	baseCtx context.Context // cancelled by Close: aborts in-flight exchanges
	cancel  context.CancelFunc

	flight singleflight.Group
	pools  map[string]chan net.Conn // idle UDP sockets per route+resolver; fixed after New

	mu      sync.Mutex
	servers []*dns.Server
	addrs   []net.Addr
	own     map[string]bool // reverse names of listen IPs, lower case
	ownIPs  []netip.Addr
	closed  bool
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// New checks cfg and builds a Server; Start makes it listen.
func New(cfg Config) (*Server, error) {
	if len(cfg.Listen) == 0 {
		return nil, errors.New("dnsproxy: no listen address")
	}
	for _, group := range [][]string{cfg.Listen, cfg.ClusterDNS, cfg.Upstreams} {
		for _, a := range group {
			if _, err := netip.ParseAddrPort(a); err != nil {
				return nil, fmt.Errorf("dnsproxy: address %q: want ip:port: %w", a, err)
			}
		}
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{
		cfg:        cfg,
		domain:     cfg.domain(),
		timeout:    cfg.UpstreamTimeout,
		log:        obs.Component(log, "dnsproxy"),
		m:          m,
		cache:      newCache(cfg.CacheSize),
		clusterDNS: cfg.ClusterDNS,
		upstreams:  cfg.Upstreams,
		dialClust:  cfg.ClusterDial,
		dialUp:     (&net.Dialer{}).DialContext,
		own:        map[string]bool{},
	}
	if s.timeout <= 0 {
		s.timeout = defaultUpstreamTimeout
	}
	if s.dialClust == nil {
		s.dialClust = (&net.Dialer{}).DialContext
	}
	s.pools = map[string]chan net.Conn{}
	for _, a := range cfg.ClusterDNS {
		s.pools[RouteCluster+" "+a] = make(chan net.Conn, udpPoolSize)
	}
	for _, a := range cfg.Upstreams {
		s.pools[RouteUpstream+" "+a] = make(chan net.Conn, udpPoolSize)
	}
	s.baseCtx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// udpPoolSize is how many idle UDP sockets are kept per resolver.
const udpPoolSize = 32

// pool returns the idle-socket pool for addr on route.
func (s *Server) pool(route, addr string) chan net.Conn {
	return s.pools[route+" "+addr]
}

// Start listens on every Listen address, UDP and TCP on the same port,
// and returns once all of them serve. On error nothing is left open.
// ctx bounds the start only; Close stops the server.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("dnsproxy: start after close")
	}
	if len(s.servers) > 0 {
		return errors.New("dnsproxy: already started")
	}
	var lc net.ListenConfig
	type pair struct {
		pc net.PacketConn
		ln net.Listener
	}
	var bound []pair
	var started []*dns.Server
	fail := func(err error) error {
		for _, srv := range started {
			_ = srv.Shutdown()
		}
		for _, p := range bound { // closing a served socket twice is harmless
			p.pc.Close()
			p.ln.Close()
		}
		s.addrs, s.ownIPs, s.own = nil, nil, map[string]bool{}
		return err
	}
	// Bind everything first: the handler reads addrs, own and upstreams,
	// which must be final before the first query is served.
	for _, a := range s.cfg.Listen {
		pc, ln, err := listenPair(ctx, &lc, a)
		if err != nil {
			return fail(err)
		}
		uaddr := pc.LocalAddr().(*net.UDPAddr)
		bound = append(bound, pair{pc, ln})
		s.addrs = append(s.addrs, uaddr)
		ip, _ := netip.AddrFromSlice(uaddr.IP)
		ip = ip.Unmap()
		s.ownIPs = append(s.ownIPs, ip)
		if rev, err := dns.ReverseAddr(ip.String()); err == nil {
			s.own[rev] = true
		}
	}
	s.upstreams = s.withoutSelf(s.upstreams)
	for _, p := range bound {
		for _, srv := range []*dns.Server{
			{PacketConn: p.pc, Handler: s, Net: "udp"},
			{Listener: p.ln, Handler: s, Net: "tcp", ReadTimeout: 5 * time.Second, IdleTimeout: func() time.Duration { return 10 * time.Second }},
		} {
			ready := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(ready) }
			errc := make(chan error, 1)
			go func() { errc <- srv.ActivateAndServe() }()
			select {
			case <-ready:
				started = append(started, srv)
			case err := <-errc:
				return fail(fmt.Errorf("serve dns %s %s: %w", srv.Net, p.pc.LocalAddr(), err))
			}
		}
	}
	s.servers = started
	s.log.Info("dns proxy listening", "addrs", fmt.Sprint(s.addrs), "cluster_dns", strings.Join(s.clusterDNS, ","), "upstreams", strings.Join(s.upstreams, ","))
	return nil
}

// listenPair binds UDP and TCP on the same port. With port 0 the TCP
// side of the kernel's UDP pick may be taken; a few fresh picks fix that.
func listenPair(ctx context.Context, lc *net.ListenConfig, addr string) (net.PacketConn, net.Listener, error) {
	ap, _ := netip.ParseAddrPort(addr) // checked in New
	tries := 1
	if ap.Port() == 0 {
		tries = 5
	}
	var err error
	for range tries {
		var pc net.PacketConn
		pc, err = lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen dns udp %s: %w", addr, err)
		}
		uaddr := pc.LocalAddr().String()
		var ln net.Listener
		ln, err = lc.Listen(ctx, "tcp", uaddr)
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		err = fmt.Errorf("listen dns tcp %s: %w", uaddr, err)
	}
	return nil, nil, err
}

// withoutSelf drops resolvers that are this proxy: forwarding to ourselves
// would loop until the timeout.
func (s *Server) withoutSelf(servers []string) []string {
	var out []string
	for _, a := range servers {
		self := false
		for _, own := range s.addrs {
			if own.String() == a {
				self = true
			}
		}
		if self {
			s.log.Warn("dropping upstream resolver that is this proxy", "upstream", a)
			continue
		}
		out = append(out, a)
	}
	return out
}

// Addrs returns the bound UDP addresses (TCP uses the same ones).
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]net.Addr(nil), s.addrs...)
}

// Close stops the listeners and aborts in-flight exchanges. It is
// idempotent and returns after the listeners are shut down.
func (s *Server) Close() error {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	var errs []error
	for _, srv := range servers {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := srv.ShutdownContext(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shutdown dns %s: %w", srv.Net, err))
		}
		cancel()
	}
	// After the shutdown, so no handler puts a socket back behind us.
	for _, p := range s.pools {
	drain:
		for {
			select {
			case c := <-p:
				c.Close()
			default:
				break drain
			}
		}
	}
	return errors.Join(errs...)
}
