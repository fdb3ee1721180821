package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/tunnel"
)

// Config is what `bridgetun up` was asked to do.
type Config struct {
	Cluster          cluster.Options
	GatewayNamespace string // "" = the connection namespace
	GatewayImage     string
	ExposeNodePort   bool
	Upgrade          bool
	Transport        string // auto, stream, udp
	GatewayEndpoint  string // udp: host:port; "" = the NodePort
	Mode             client.Mode
	NewStack         client.StackFactory // netstack mode's userspace stack (cmd wires gVisor in); required there
	TUNName          string
	AllowConflicts   bool
	AlsoProxy        []netip.Prefix
	AllowAPIServer   bool // the gateway's destination policy lets this workstation reach the API server
	MTU              int
	Forwards         []string         // netstack mode: [udp:]LOCAL=REMOTE or SVC[:PORT][=LOCALPORT] forwards
	ForwardAll       bool             // netstack mode: forward every Service of the namespace, kept current by a watch
	DNS              string           // auto (split DNS, OS configured in TUN mode) or none
	SOCKSAddr        string           // netstack mode: SOCKS5 listen address; "" = off
	HTTPProxyAddr    string           // netstack mode: HTTP proxy listen address; "" = off
	SOCKSAuth        ProxyCredentials // netstack mode: the SOCKS5 proxy's username/password; zero = none
	HTTPProxyAuth    ProxyCredentials // netstack mode: the HTTP proxy's Basic credentials; zero = none
	Paths            Paths
	Log              *slog.Logger          // nil discards
	Progress         io.Writer             // human progress lines; nil discards
	Registerer       prometheus.Registerer // nil = no metrics
	// Ready is called once the tunnel carries traffic (for --background).
	Ready func(Status)
	// Connect opens the cluster connection; nil = cluster.Connect.
	Connect func(context.Context, cluster.Options) (*cluster.Conn, error)
}

// Session is a running `up`: wiring of its components, each of which owns
// its goroutines (Run returns after they exit).
type Session struct {
	cfg   Config
	facts facts // fixed once connected
	link  *gatewayLink
	tun   *client.Client
	dns   *dnsService
	proxy *proxyService
	fwd   *forwardSet
	ic    *interceptor
}

// facts are what status shows that never changes during a session.
type facts struct {
	context, namespace, gwNamespace, transport string
	routes                                     []netip.Prefix
	since                                      time.Time
}

// Run brings the session up and keeps it until ctx ends or `down` is asked;
// then it removes everything it added.
//
// Shutdown order: when ctx ends every component's Run returns — intercepts
// first restore their workloads (the tunnel and control API still work),
// the socket API, forwards and proxies close, DNS settings are restored,
// the heartbeat stops. Only after all of them have exited is the tunnel
// (device, routes) closed, and last the leftovers record removed.
func Run(ctx context.Context, cfg Config) (err error) {
	cfg = withDefaults(cfg)
	s := &Session{cfg: cfg}
	start := time.Now()
	if err := s.repair(ctx); err != nil {
		return err
	}
	var closers []func() error // undo on the way out, last first
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			err = errors.Join(err, closers[i]())
		}
	}()
	conn, err := cfg.Connect(ctx, cfg.Cluster)
	if err != nil {
		return err
	}
	key, err := s.join(ctx, conn)
	if err != nil {
		return err
	}
	if err := cfg.Paths.writeLeftovers(leftovers{PID: os.Getpid(), TUN: s.tunName(), Socket: cfg.Paths.Socket, Context: conn.Context}); err != nil {
		return err
	}
	closers = append(closers, func() error { cfg.Paths.clearLeftovers(); return nil })
	if err := s.startTunnel(ctx, conn, key); err != nil {
		return err
	}
	closers = append(closers, func() error {
		err := s.tun.Close()
		s.progress("disconnected: routes and device removed")
		if err != nil {
			return fmt.Errorf("close tunnel: %w", err)
		}
		return nil
	})
	s.progress("connected in %d ms: tunnel address %s, %d routes via %s", time.Since(start).Milliseconds(), s.link.Registration().Address, len(s.facts.routes), s.describeDevice())
	if err := s.startServices(ctx, conn, &closers); err != nil {
		return err
	}
	s.ic.Repair(ctx)

	ctx, down := context.WithCancel(ctx)
	defer down()
	api, err := listenAPI(cfg.Paths, apiHandlers{status: s.apiStatus, down: down, intercept: s.ic.Intercept, leave: s.ic.Leave,
		startTrace: s.startTrace, getTrace: s.getTrace})
	if err != nil {
		return err
	}
	s.registerMetrics()
	s.link.setState("connected")
	if cfg.Ready != nil {
		cfg.Ready(s.Status())
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.link.Run(gctx) })
	g.Go(func() error { return s.ic.Run(gctx) })
	g.Go(func() error { return s.dns.Run(gctx) })
	if s.proxy != nil {
		g.Go(func() error { return s.proxy.Run(gctx) })
	}
	g.Go(func() error { return s.fwd.Run(gctx) })
	g.Go(func() error { return api.Run(gctx) })
	g.Go(func() error {
		// `wg show` is a convenience: a failure costs the session nothing.
		if err := s.tun.ServeUAPI(gctx); err != nil {
			s.cfg.Log.Warn("wireguard-tools socket (wg show) not served", "err", err)
		}
		return nil
	})
	return g.Wait()
}

func withDefaults(cfg Config) Config {
	cfg.Log = obs.Component(cfg.Log, "session")
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	if cfg.Connect == nil {
		cfg.Connect = cluster.Connect
	}
	return cfg
}

// repair undoes what a crashed session left, and refuses to start beside
// a live one.
func (s *Session) repair(ctx context.Context) error {
	repaired, err := s.cfg.Paths.repairLeftovers(deleteLink)
	if err != nil {
		return err
	}
	for _, r := range repaired {
		s.progress("repaired a previous session's leftovers: %s", r)
	}
	if ok, err := RepairDNS(s.cfg.Paths); err != nil {
		return fmt.Errorf("restore DNS settings a previous session left: %w", err)
	} else if ok {
		s.progress("repaired a previous session's leftovers: restored /etc/resolv.conf")
	}
	if st, err := NewClient(s.cfg.Paths.Socket).Status(ctx); err == nil {
		return &AlreadyUpError{PID: st.PID, Socket: s.cfg.Paths.Socket}
	}
	return nil
}

// join checks access, ensures the gateway, registers this workstation and
// learns the routes; it returns the workstation's key.
func (s *Session) join(ctx context.Context, conn *cluster.Conn) (tunnel.Key, error) {
	gwNS := s.cfg.GatewayNamespace
	if gwNS == "" {
		gwNS = conn.Namespace
	}
	s.facts = facts{context: conn.Context, namespace: conn.Namespace, gwNamespace: gwNS, since: time.Now()}
	s.progress("context %q, namespace %q (gateway in %q)", conn.Context, conn.Namespace, gwNS)
	if err := cluster.CheckAccess(ctx, conn.Client, gwNS, cluster.UpAccessChecks(gwNS)); err != nil {
		return tunnel.Key{}, err
	}
	pod, err := ensureGateway(ctx, gatewaySetup{Client: conn.Client, Namespace: gwNS, Image: s.cfg.GatewayImage,
		ExposeNodePort: s.cfg.ExposeNodePort, Upgrade: s.cfg.Upgrade, Progress: s.progress})
	if err != nil {
		return tunnel.Key{}, err
	}
	key, err := s.cfg.Paths.loadOrCreateKey()
	if err != nil {
		return tunnel.Key{}, err
	}
	alsoProxy := make([]string, len(s.cfg.AlsoProxy))
	for i, p := range s.cfg.AlsoProxy {
		alsoProxy[i] = p.String()
	}
	s.link = newGatewayLink(linkConfig{
		Client: conn.Client, Namespace: gwNS, Pod: pod.Name, PublicKey: key.PublicKey().String(),
		PrivateKey: key, Credentials: cluster.NewCredentialSource(conn),
		AlsoProxy: alsoProxy, AllowAPIServer: s.cfg.AllowAPIServer,
		DialPod: func(ctx context.Context, pod string, port int) (net.Conn, error) {
			return cluster.PortForwardDialer(conn.Config, conn.Client, gwNS, pod, port)(ctx)
		},
		Log: s.cfg.Log,
	})
	if err := s.link.Register(ctx); err != nil {
		return tunnel.Key{}, err
	}
	s.ic = newInterceptor(interceptConfig{Client: conn.Client, Namespace: conn.Namespace, GatewayNamespace: gwNS,
		PublicKey: key.PublicKey().String(), Control: s.link.control,
		Progress: s.progress, Log: s.cfg.Log, Connections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridgetun_intercept_inbound_connections_total",
			Help: "Intercepted connections the gateway delivered to this workstation's local server.",
		})})
	return key, s.learnRoutes(ctx, conn)
}

func (s *Session) learnRoutes(ctx context.Context, conn *cluster.Conn) error {
	// The gateway's namespace is where up's permissions were checked: a
	// developer with only a namespaced Role can still learn the networks.
	nets, err := cluster.DiscoverNetworksWith(ctx, conn.Client, cluster.NetworkOptions{Namespace: s.facts.gwNamespace, Log: s.cfg.Log})
	if err != nil {
		return err
	}
	reg := s.link.Registration()
	gw, err := netip.ParseAddr(reg.GatewayAddress)
	if err != nil {
		return fmt.Errorf("gateway address %q: %w", reg.GatewayAddress, err)
	}
	apiAddrs, err := conn.APIServerAddrs(ctx)
	if err != nil {
		return err
	}
	s.facts.routes = tunnelRoutes(nets, s.cfg.AlsoProxy, gw, apiAddrs)
	if nets.DNS.IsValid() {
		s.link.SetClusterDNS(nets.DNS.String())
	}
	return nil
}
