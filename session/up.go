package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/version"
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
	TUNName          string
	AllowConflicts   bool
	AlsoProxy        []netip.Prefix
	MTU              int
	Forwards         []string // netstack mode: [udp:]LOCAL=REMOTE or SVC[:PORT][=LOCALPORT] forwards
	ForwardAll       bool     // netstack mode: forward every Service of the namespace, kept current by a watch
	DNS              string   // auto (split DNS, OS configured in TUN mode) or none
	SOCKSAddr        string   // netstack mode: SOCKS5 listen address; "" = off
	HTTPProxyAddr    string   // netstack mode: HTTP proxy listen address; "" = off
	Paths            Paths
	Log              *slog.Logger          // nil discards
	Progress         io.Writer             // human progress lines; nil discards
	Registerer       prometheus.Registerer // nil = no metrics
	// Ready is called once the tunnel carries traffic (for --background).
	Ready func(Status)
}

// Session is a running `up`.
type Session struct {
	cfg      Config
	log      *slog.Logger
	conn     *cluster.Conn
	gwNS     string
	key      tunnel.Key
	reg      api.RegisterResponse
	routes   []netip.Prefix
	client   *client.Client
	mode     client.Mode
	tr       string
	since    time.Time
	state    atomic.Value // string
	podMu    sync.Mutex
	pod      string
	redials  atomic.Int64
	dns      *dnsState
	proxy    *proxyState
	forwards forwardSet // its own lock: the --forward-all watch changes it

	gwImage      string // the gateway pod's image: the sidecar runs the same
	gwPullPolicy corev1.PullPolicy
	icOp         sync.Mutex // serialises intercept and leave operations (slow: rollouts)
	icMu         sync.Mutex // guards intercepts only (held briefly: the lease renewal needs it)
	intercepts   map[string]*interceptState
	icConns      prometheus.Counter
}

func orOff(addr string) string {
	if addr == "" {
		return "off"
	}
	return addr
}

// Run brings the session up and keeps it until ctx ends or `down` is asked;
// then it removes everything it added. Shutdown order: API socket, device and
// routes (client.Close), session record.
func Run(ctx context.Context, cfg Config) (err error) {
	s := &Session{cfg: cfg, log: cfg.Log, mode: cfg.Mode, since: time.Now(), intercepts: map[string]*interceptState{}}
	s.icConns = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bridgetun_intercept_inbound_connections_total",
		Help: "Intercepted connections the gateway delivered to this workstation's local server.",
	})
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "session")
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
		s.cfg.Progress = io.Discard
	}
	s.state.Store("connecting")
	start := time.Now()

	repaired, err := cfg.Paths.repairLeftovers(deleteLink)
	if err != nil {
		return err
	}
	for _, r := range repaired {
		s.progress("repaired a previous session's leftovers: %s", r)
	}
	if ok, err := RepairDNS(cfg.Paths); err != nil {
		return fmt.Errorf("restore DNS settings a previous session left: %w", err)
	} else if ok {
		s.progress("repaired a previous session's leftovers: restored /etc/resolv.conf")
	}
	if st, err := NewClient(cfg.Paths.Socket).Status(ctx); err == nil {
		return &AlreadyUpError{PID: st.PID, Socket: cfg.Paths.Socket}
	}

	if s.conn, err = cluster.Connect(ctx, cfg.Cluster); err != nil {
		return err
	}
	s.gwNS = cfg.GatewayNamespace
	if s.gwNS == "" {
		s.gwNS = s.conn.Namespace
	}
	s.progress("context %q, namespace %q (gateway in %q)", s.conn.Context, s.conn.Namespace, s.gwNS)
	if err := cluster.CheckAccess(ctx, s.conn.Client, s.gwNS, cluster.UpAccessChecks(s.gwNS)); err != nil {
		return err
	}
	if err := s.ensureGateway(ctx); err != nil {
		return err
	}
	if s.key, err = tunnel.LoadOrCreateKey(cfg.Paths.keyFile()); err != nil {
		return err
	}
	if err := s.register(ctx); err != nil {
		return err
	}
	if err := s.computeRoutes(ctx); err != nil {
		return err
	}
	if err := cfg.Paths.writeLeftovers(leftovers{PID: os.Getpid(), TUN: s.tunName(), Socket: cfg.Paths.Socket, Context: s.conn.Context}); err != nil {
		return err
	}
	defer cfg.Paths.clearLeftovers()
	if err := s.connect(ctx); err != nil {
		return err
	}
	defer func() {
		if cerr := s.client.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close tunnel: %w", cerr))
		}
		s.progress("disconnected: routes and device removed")
	}()
	s.state.Store("connected")
	s.progress("connected in %d ms: tunnel address %s, %d routes via %s", time.Since(start).Milliseconds(), s.reg.Address, len(s.routes), s.describeDevice())
	s.registerMetrics()
	if s.dns, err = s.startDNS(ctx); err != nil {
		return err
	}
	defer func() {
		if derr := s.dns.stop(); derr != nil {
			err = errors.Join(err, fmt.Errorf("restore DNS: %w", derr))
		}
	}()
	if s.dns.os != nil {
		s.progress("DNS: cluster names resolve through %s (%s); other names go to %v", s.dns.listen, s.dns.mode(), s.dns.upstreams)
	} else {
		s.progress("DNS: split resolver on %s (OS settings unchanged)", s.dns.listen)
	}
	if s.proxy, err = s.startProxy(); err != nil {
		return err
	}
	defer s.proxy.stop()
	if s.proxy != nil {
		s.progress("proxies: SOCKS5 %s, HTTP %s (names resolve in the cluster)", orOff(s.proxy.socks), orOff(s.proxy.http))
	}
	if err := s.startForwards(ctx, clientListen(s.client, s.log)); err != nil {
		return err
	}
	defer s.forwards.stop()

	s.repairIntercepts(ctx)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	api, err := serveAPI(ctx, cfg.Paths.Socket, apiHandlers{status: s.Status, down: cancel, intercept: s.Intercept, leave: s.Leave})
	if err != nil {
		return err
	}
	defer api.Close()
	if cfg.Ready != nil {
		cfg.Ready(s.Status())
	}
	go s.renewIntercepts(ctx)
	s.heartbeat(ctx)
	// Intercepts end before the tunnel: their workloads go back first.
	s.leaveAll()
	return nil
}

func (s *Session) progress(format string, args ...any) {
	fmt.Fprintf(s.cfg.Progress, format+"\n", args...)
	s.log.Info(fmt.Sprintf(format, args...))
}

func (s *Session) tunName() string {
	if s.mode != client.ModeTUN {
		return ""
	}
	if s.cfg.TUNName == "" {
		return "bt0"
	}
	return s.cfg.TUNName
}

func (s *Session) describeDevice() string {
	if s.mode == client.ModeTUN {
		return "TUN " + s.tunName() + " (" + s.tr + ")"
	}
	return "netstack (" + s.tr + ")"
}

// ensureGateway installs the gateway when missing and waits for it.
func (s *Session) ensureGateway(ctx context.Context) error {
	have, err := cluster.GatewayVersion(ctx, s.conn.Client, s.gwNS)
	if err != nil || have == "" || s.cfg.Upgrade || s.cfg.ExposeNodePort {
		spec := cluster.GatewaySpec{Namespace: s.gwNS, Image: s.cfg.GatewayImage, ExposeNodePort: s.cfg.ExposeNodePort, Version: version.Version}
		if key, _, err := cluster.ReadGatewaySecret(ctx, s.conn.Client, s.gwNS); err == nil && key != "" {
			spec.PrivateKey = key
		} else {
			k, err := tunnel.GenerateKey()
			if err != nil {
				return err
			}
			spec.PrivateKey = k.String()
		}
		if err := cluster.InstallGateway(ctx, s.conn.Client, spec, s.cfg.Upgrade); err != nil {
			return err
		}
		if have == "" {
			s.progress("installed the gateway in %q (image %s)", s.gwNS, s.cfg.GatewayImage)
		}
	} else if have != version.Version {
		return fmt.Errorf("gateway in %q runs %s but this client is %s: run `bridgetun install --upgrade` (or `bridgetun up --upgrade`)", s.gwNS, have, version.Version)
	}
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var pod *corev1.Pod
	for {
		if pod, err = cluster.WaitGatewayReady(wctx, s.conn.Client, s.gwNS); err != nil {
			return err
		}
		// Right after an upgrade the old pod is still the ready one: wait
		// for a pod of this version.
		if pod.Annotations[cluster.AnnotationVersion] == version.Version {
			break
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("gateway in %q: no ready pod of version %s after 90s (pod %s runs %s)", s.gwNS, version.Version, pod.Name, pod.Annotations[cluster.AnnotationVersion])
		case <-time.After(500 * time.Millisecond): // polling the rollout
		}
	}
	s.setPod(pod.Name)
	for _, c := range pod.Spec.Containers {
		if c.Name == cluster.GatewayContainer {
			s.gwImage, s.gwPullPolicy = c.Image, c.ImagePullPolicy
		}
	}
	s.progress("gateway ready: pod %s", pod.Name)
	return nil
}

func (s *Session) setPod(name string) {
	s.podMu.Lock()
	s.pod = name
	s.podMu.Unlock()
}

func (s *Session) currentPod() string {
	s.podMu.Lock()
	defer s.podMu.Unlock()
	return s.pod
}

// register admits this workstation's key at the gateway's control API,
// retrying for a while: a gateway pod that just became ready may still be
// opening its listeners, and a port-forward can fail transiently.
func (s *Session) register(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	backoff := 200 * time.Millisecond
	for {
		err := s.registerOnce(rctx)
		if err == nil || rctx.Err() != nil {
			return err
		}
		s.log.Debug("register failed, retrying", "err", err, "in", backoff)
		select {
		case <-rctx.Done():
			return err
		case <-time.After(backoff): // retry backoff
		}
		backoff = min(2*backoff, 3*time.Second)
		// The pod may have been replaced meanwhile (an upgrade rolls it
		// right after install returns): ask again which one serves.
		if p, werr := cluster.WaitGatewayReady(rctx, s.conn.Client, s.gwNS); werr == nil && p.Name != s.currentPod() {
			s.log.Info("gateway pod changed; registering with the new one", "old", s.currentPod(), "new", p.Name)
			s.setPod(p.Name)
		}
	}
}

func (s *Session) registerOnce(ctx context.Context) error {
	var rr api.RegisterResponse
	req := api.RegisterRequest{PublicKey: s.key.PublicKey().String(), Version: version.Version}
	if err := s.control(ctx, http.MethodPost, "/v1/register", req, &rr); err != nil {
		return fmt.Errorf("register with gateway: %w", err)
	}
	if s.reg.Address != "" && rr.Address != s.reg.Address {
		s.log.Warn("gateway handed out a different tunnel address", "was", s.reg.Address, "now", rr.Address)
	}
	s.reg = rr
	return nil
}

// computeRoutes sends service and pod CIDRs (and --also-proxy) into the
// tunnel, never the API server's own address.
func (s *Session) computeRoutes(ctx context.Context) error {
	// The gateway's namespace is where up's permissions were checked: a
	// developer with only a namespaced Role can still learn the networks.
	nets, err := cluster.DiscoverNetworksWith(ctx, s.conn.Client, cluster.NetworkOptions{Namespace: s.gwNS, Log: s.log})
	if err != nil {
		return err
	}
	gw, err := netip.ParseAddr(s.reg.GatewayAddress)
	if err != nil {
		return fmt.Errorf("gateway address %q: %w", s.reg.GatewayAddress, err)
	}
	want := append(append(append([]netip.Prefix{}, nets.ServiceCIDRs...), nets.PodCIDRs...), s.cfg.AlsoProxy...)
	want = append(want, netip.PrefixFrom(gw, 32))
	apiAddrs, err := s.conn.APIServerAddrs(ctx)
	if err != nil {
		return err
	}
	s.routes = excludeAddrs(want, apiAddrs)
	if s.reg.ClusterDNS == "" && nets.DNS.IsValid() {
		s.reg.ClusterDNS = nets.DNS.String()
	}
	return nil
}

// connect starts the tunnel over the chosen transport. auto tries UDP for
// 3 s when a UDP endpoint is known, then falls back to the stream.
func (s *Session) connect(ctx context.Context) error {
	tr := s.cfg.Transport
	if tr == "" {
		tr = "auto"
	}
	switch tr {
	case "udp":
		return s.start(ctx, client.TransportUDP, 15*time.Second)
	case "stream":
		return s.start(ctx, client.TransportStream, 15*time.Second)
	case "auto":
		if ep, _ := s.udpEndpoint(ctx); ep != "" {
			if err := s.start(ctx, client.TransportUDP, 3*time.Second); err == nil {
				return nil
			} else {
				s.progress("UDP to %s did not answer within 3s (%v); using the stream transport", ep, err)
			}
		}
		return s.start(ctx, client.TransportStream, 15*time.Second)
	}
	return fmt.Errorf("--transport %q: want auto, stream or udp", tr)
}

func (s *Session) start(ctx context.Context, tr client.Transport, handshakeWithin time.Duration) error {
	addr, err := netip.ParsePrefix(s.reg.Address)
	if err != nil {
		return fmt.Errorf("tunnel address %q: %w", s.reg.Address, err)
	}
	gwKey, err := tunnel.ParseKey(s.reg.GatewayPublicKey)
	if err != nil {
		return fmt.Errorf("gateway key: %w", err)
	}
	mtu := s.cfg.MTU
	if mtu == 0 && tr == client.TransportStream {
		mtu = tunnel.StreamMTU
	}
	cfg := client.Config{
		PrivateKey: s.key, Addr: addr, GatewayKey: gwKey, Routes: s.routes, MTU: mtu,
		Mode: s.mode, Transport: tr, TUNName: s.cfg.TUNName,
		AllowConflicts: s.cfg.AllowConflicts, Log: s.cfg.Log, Registerer: s.cfg.Registerer,
	}
	switch tr {
	case client.TransportUDP:
		if cfg.GatewayEndpoint, err = s.udpEndpoint(ctx); err != nil {
			return err
		}
	case client.TransportStream:
		cfg.StreamDial = s.streamDial
	}
	c, err := client.Start(cfg)
	if err != nil {
		return err
	}
	if err := waitHandshake(ctx, c, handshakeWithin); err != nil {
		_ = c.Close()
		return err
	}
	s.podMu.Lock()
	s.client, s.tr = c, string(tr)
	s.podMu.Unlock()
	return nil
}

// streamDial opens a port-forward to the gateway's stream port. When the
// gateway pod was replaced, it finds the new one and registers again, so
// the tunnel keeps its address and the WireGuard session re-handshakes.
func (s *Session) streamDial(ctx context.Context) (net.Conn, error) {
	pod := s.currentPod()
	c, err := cluster.PortForwardDialer(s.conn.Config, s.conn.Client, s.gwNS, pod, cluster.StreamPort)(ctx)
	if err == nil {
		s.redials.Add(1)
		return c, nil
	}
	s.state.Store("reconnecting")
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	p, werr := cluster.WaitGatewayReady(wctx, s.conn.Client, s.gwNS)
	if werr != nil {
		return nil, fmt.Errorf("port-forward to %s: %v; waiting for a gateway pod: %w", pod, err, werr)
	}
	if p.Name != pod {
		s.setPod(p.Name)
		s.log.Info("gateway pod replaced; registering again", "old", pod, "new", p.Name)
		if err := s.register(ctx); err != nil {
			return nil, err
		}
		if c := s.clientOrNil(); c != nil {
			// The initiation this triggers is held by the stream bind and
			// sent first on the connection returned below.
			if err := c.Rehandshake(); err != nil {
				s.log.Warn("rehandshake with the new gateway pod", "err", err)
			}
		}
	}
	c, err = cluster.PortForwardDialer(s.conn.Config, s.conn.Client, s.gwNS, p.Name, cluster.StreamPort)(ctx)
	if err != nil {
		return nil, err
	}
	s.redials.Add(1)
	s.state.Store("connected")
	return c, nil
}

func (s *Session) clientOrNil() *client.Client {
	s.podMu.Lock()
	defer s.podMu.Unlock()
	return s.client
}

// udpEndpoint is --gateway-endpoint, else node address + the gateway's NodePort.
func (s *Session) udpEndpoint(ctx context.Context) (string, error) {
	if s.cfg.GatewayEndpoint != "" {
		return s.cfg.GatewayEndpoint, nil
	}
	svc, err := s.conn.Client.CoreV1().Services(s.gwNS).Get(ctx, cluster.GatewayName, metav1.GetOptions{})
	if err != nil || len(svc.Spec.Ports) == 0 || svc.Spec.Ports[0].NodePort == 0 {
		return "", errors.New("no UDP endpoint: pass --gateway-endpoint HOST:PORT or --expose nodeport")
	}
	pod, err := s.conn.Client.CoreV1().Pods(s.gwNS).Get(ctx, s.currentPod(), metav1.GetOptions{})
	if err != nil || pod.Status.HostIP == "" {
		return "", fmt.Errorf("gateway pod's node address unknown: pass --gateway-endpoint HOST:PORT")
	}
	return net.JoinHostPort(pod.Status.HostIP, strconv.Itoa(int(svc.Spec.Ports[0].NodePort))), nil
}

// heartbeat renews the registration (the gateway forgets silent peers).
func (s *Session) heartbeat(ctx context.Context) {
	every := time.Duration(s.reg.TTLSeconds) * time.Second / 3
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.register(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("renew registration", "err", err)
			}
		}
	}
}

// Status reports the session.
func (s *Session) Status() Status {
	st := Status{
		State: s.state.Load().(string), PID: os.Getpid(),
		Context: s.conn.Context, Namespace: s.conn.Namespace, GatewayNamespace: s.gwNS,
		GatewayPod: s.currentPod(), GatewayVersion: s.reg.Version, ClientVersion: version.Version,
		Mode: string(s.mode), Transport: s.tr, TUN: s.tunName(),
		TunnelAddress: s.reg.Address, GatewayAddress: s.reg.GatewayAddress,
		ClusterDNS: s.reg.ClusterDNS, ClusterDomain: s.reg.ClusterDomain,
		Reconnects: max(0, s.redials.Load()-1), Since: s.since,
		DNSMode: s.dns.mode(),
	}
	if s.proxy != nil {
		st.SOCKSProxy, st.HTTPProxy = s.proxy.socks, s.proxy.http
	}
	st.Forwards = s.forwards.list()
	st.Intercepts = s.interceptInfos()
	if s.dns != nil {
		st.DNSListen, st.DNSUpstreams, st.DNSSearch, st.DNSRouting = s.dns.listen, s.dns.upstreams, s.dns.search, s.dns.routing
	}
	for _, r := range s.routes {
		st.Routes = append(st.Routes, r.String())
	}
	if s.client != nil {
		if ps, err := s.client.Status(); err == nil {
			st.LastHandshake, st.RxBytes, st.TxBytes = ps.LastHandshake, ps.RxBytes, ps.TxBytes
			if !ps.LastHandshake.IsZero() {
				st.HandshakeAgeSec = time.Since(ps.LastHandshake).Seconds()
			}
		}
	}
	return st
}

func (s *Session) registerMetrics() {
	if s.cfg.Registerer == nil {
		return
	}
	_ = s.cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "bridgetun_tunnel_handshake_age_seconds",
		Help: "Seconds since the last WireGuard handshake with the gateway.",
	}, func() float64 { return s.Status().HandshakeAgeSec }))
	_ = s.cfg.Registerer.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "bridgetun_tunnel_transport_reconnects_total",
		Help: "Stream transport redials after the first connection.",
	}, func() float64 { return float64(max(0, s.redials.Load()-1)) }))
	_ = s.cfg.Registerer.Register(s.icConns)
	_ = s.cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "bridgetun_intercept_active",
		Help: "Intercepts this workstation holds.",
	}, func() float64 { return float64(len(s.interceptInfos())) }))
}

// waitHandshake polls the client until WireGuard completes a handshake.
func waitHandshake(ctx context.Context, c *client.Client, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		if st, err := c.Status(); err == nil && !st.LastHandshake.IsZero() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no WireGuard handshake with the gateway within %s", within)
		case <-time.After(20 * time.Millisecond): // polling the device's handshake time
		}
	}
}
