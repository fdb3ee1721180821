package netstack

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/bridgetun/bridgetun/internal/splice"
)

const (
	dialTimeout           = 5 * time.Second
	defaultUDPIdleTimeout = 60 * time.Second
	// tcpMaxInFlight bounds SYNs whose real destination is still being dialled.
	tcpMaxInFlight = 1024
)

// GatewayConfig configures NewGateway.
type GatewayConfig struct {
	Addrs          []netip.Addr                                                         // the gateway's own tunnel addresses: answered (ping), never dialled on a peer's behalf
	MTU            int                                                                  // 0 = 1420
	Log            *slog.Logger                                                         // nil discards
	Registerer     prometheus.Registerer                                                // nil = no metrics
	Dial           func(ctx context.Context, network, address string) (net.Conn, error) // nil = net.Dialer{Timeout: 5s}
	Deny           []netip.Prefix                                                       // extra destinations never dialled; loopback, unspecified, link-local, multicast and Addrs are always denied
	UDPIdleTimeout time.Duration                                                        // 0 = 60s
	// Redirect sends flows for one address:port (typically the gateway's own
	// tunnel address, port 53) to another real destination instead — how the
	// gateway answers DNS on its tunnel address with the pod's resolver. A
	// redirected flow is not subject to Deny. nil = none.
	Redirect map[netip.AddrPort]netip.AddrPort
	// Allow is the destination policy, asked once per new flow from a peer
	// (a TCP SYN, the first UDP datagram of a pair, an ICMP echo request;
	// proto is "tcp", "udp" or "icmp", ports 0 for ICMP) before the
	// built-in denials: false refuses the flow and counts it under reason
	// in bridgetun_gateway_refused_total. A refused TCP SYN is answered
	// with an RST, a UDP datagram or echo request with ICMP destination
	// unreachable (administratively prohibited), so the client fails at
	// once. Redirected flows and DialContext are not asked. nil = allow
	// everything the built-in denials allow.
	Allow func(src, dst netip.AddrPort, proto string) (reason string, ok bool)
	// GrowBuffers says whether a new TCP flow from the workstation at src
	// may grow its buffers (receive moderation, send auto-tuning, up to
	// maxBuffer) instead of keeping gatewayBuffer fixed. Growth is for
	// workstations on the stream transport: their round trip runs through
	// the API server and kubelet's buffers, long enough that a 1 MiB
	// window caps a flow (bench-cluster, stream upload 0.37-0.47× of
	// kubectl port-forward fixed, 0.55-0.58× growing; download alike).
	// Over UDP the round trip is short and fixed buffers keep many flows
	// fair (gatewayBuffer). nil = none grows.
	GrowBuffers func(src netip.Addr) bool

	// pingHost replaces the host pinger (tests); nil = hostPing.
	pingHost pingFunc
}

// Gateway terminates every TCP and UDP flow a peer sends into the tunnel and
// relays it over a connection the gateway dials from the host to the flow's
// real destination. It answers pings to its own addresses and relays echo
// requests for other hosts (icmp.go).
type Gateway struct {
	cfg   GatewayConfig
	log   *slog.Logger
	ep    *linkEndpoint
	stack *stack.Stack
	m     *metrics
	deny  []netip.Prefix
	own   map[netip.Addr]bool
	icmp  *echoRelay

	ctx    context.Context // cancelled by Close; parent of every dial
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	conns  map[io.Closer]struct{} // every open relay conn, closed by Close
	wg     sync.WaitGroup         // every goroutine the gateway runs
}

// NewGateway builds the gateway's stack; hand TUN() to wireguard-go.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	if cfg.MTU == 0 {
		cfg.MTU = defaultMTU
	}
	if cfg.UDPIdleTimeout == 0 {
		cfg.UDPIdleTimeout = defaultUDPIdleTimeout
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: dialTimeout}
		cfg.Dial = d.DialContext
	}
	if cfg.pingHost == nil {
		cfg.pingHost = hostPing
	}
	log := cfg.Log
	if log == nil {
		log = discardLogger()
	}
	g := &Gateway{
		cfg:   cfg,
		log:   obs.Component(log, "netstack_gateway"),
		ep:    newLinkEndpoint(cfg.MTU),
		own:   make(map[netip.Addr]bool),
		conns: make(map[io.Closer]struct{}),
	}
	g.deny = append(alwaysDenied(), cfg.Deny...)
	for _, a := range cfg.Addrs {
		a = a.Unmap()
		g.own[a] = true
		g.deny = append(g.deny, netip.PrefixFrom(a, a.BitLen()))
	}
	m, err := newMetrics(cfg.Registerer, func() float64 { return float64(g.ep.dropped.Load()) }, g.tcpEvents)
	if err != nil {
		return nil, fmt.Errorf("new gateway: %w", err)
	}
	g.m = m
	s, err := newStack(g.ep, cfg.Addrs, stackOptions{promiscuous: true, acceptLoopback: true})
	if err != nil {
		m.unregister(cfg.Registerer)
		return nil, fmt.Errorf("new gateway: %w", err)
	}
	g.stack = s
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.icmp = &echoRelay{g: g, sem: make(chan struct{}, echoMaxInFlight)}
	g.ep.intercept = g.icmp.intercept

	tcpFwd := tcp.NewForwarder(s, 0, tcpMaxInFlight, g.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	udpFwd := udp.NewForwarder(s, g.handleUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, udpFwd.HandlePacket)
	return g, nil
}

// tcpEvents reads gVisor's counters for bridgetun_gateway_tcp_events_total.
func (g *Gateway) tcpEvents() map[string]uint64 {
	if g.stack == nil {
		return nil
	}
	st := g.stack.Stats().TCP
	return map[string]uint64{
		"forward_max_in_flight_drop": st.ForwardMaxInFlightDrop.Value(),
		"listen_overflow_syn_drop":   st.ListenOverflowSynDrop.Value(),
		"failed_connection_attempts": st.FailedConnectionAttempts.Value(),
		"resets_sent":                st.ResetsSent.Value(),
		"resets_received":            st.ResetsReceived.Value(),
		"established_resets":         st.EstablishedResets.Value(),
		"invalid_segments_received":  st.InvalidSegmentsReceived.Value(),
		"segment_send_errors":        st.SegmentSendErrors.Value(),
	}
}

// alwaysDenied are destinations a peer may never reach through the gateway:
// the gateway host itself and addresses that mean nothing off this host.
func alwaysDenied() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("0.0.0.0/32"),
		netip.MustParsePrefix("::/128"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("fe80::/10"),
		netip.MustParsePrefix("224.0.0.0/4"),
		netip.MustParsePrefix("255.255.255.255/32"),
		netip.MustParsePrefix("ff00::/8"),
	}
}

// TUN returns the device to hand to wireguard-go.
func (g *Gateway) TUN() tun.Device { return tunDevice{g.ep} }

// DialContext dials INTO the tunnel from the gateway's own address, e.g. to a
// workstation's tunnel address for an intercept. network is tcp/tcp4/tcp6/udp/udp4/udp6
// and the host must be an IP literal. The deny list does not apply.
func (g *Gateway) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := dialStack(ctx, g.stack, network, address)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return c, nil
}

// Close stops the stack, closes every relayed flow and waits for the
// gateway's goroutines. Idempotent.
func (g *Gateway) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	for c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.cancel()
	// Order: the link first, so gVisor writers blocked on a full queue return;
	// then the stack (closes endpoints, stops its goroutines); then ours.
	g.ep.Close()
	g.stack.Close()
	g.stack.Wait()
	g.wg.Wait()
	g.m.unregister(g.cfg.Registerer)
	return nil
}

// enter registers a goroutine with the WaitGroup; false once Close has begun.
func (g *Gateway) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

// track remembers c so Close can close it; false (and c closed) after Close.
func (g *Gateway) track(c io.Closer) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		c.Close()
		return false
	}
	g.conns[c] = struct{}{}
	return true
}

func (g *Gateway) untrack(c io.Closer) {
	g.mu.Lock()
	delete(g.conns, c)
	g.mu.Unlock()
	c.Close()
}

// ReasonLocal is the refusal reason of the built-in denials (loopback,
// unspecified, link-local, multicast, the gateway's own addresses, Deny).
const ReasonLocal = "local"

// target is where a flow from src to dst is dialled: a redirect, dst
// itself, or nowhere (false, with the reason) when the policy refuses it
// or dst is denied.
func (g *Gateway) target(src, dst netip.AddrPort, proto string) (netip.AddrPort, string, bool) {
	if t, ok := g.cfg.Redirect[dst]; ok {
		return t, "", true
	}
	if reason, ok := g.allowed(src, dst, proto); !ok {
		return dst, reason, false
	}
	return dst, "", true
}

// allowed asks the policy, then the built-in denials, whether a peer's
// flow may go from src to dst; a refusal is counted by its reason.
func (g *Gateway) allowed(src, dst netip.AddrPort, proto string) (string, bool) {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	reason, ok := "", true
	if g.cfg.Allow != nil {
		reason, ok = g.cfg.Allow(src, dst, proto)
		if !ok && reason == "" {
			reason = "policy"
		}
	}
	if ok && g.denied(dst.Addr()) {
		reason, ok = ReasonLocal, false
	}
	if !ok {
		g.m.refused.WithLabelValues(reason).Inc()
	}
	return reason, ok
}

// denied reports whether a peer may not reach a.
func (g *Gateway) denied(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range g.deny {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// handleTCP runs in its own goroutine per SYN (gVisor starts it). It dials the
// real destination before accepting, so a refused or unreachable destination
// becomes an RST to the peer instead of an accepted connection that dies.
func (g *Gateway) handleTCP(r *tcp.ForwarderRequest) {
	if !g.enter() {
		r.Complete(true)
		return
	}
	defer g.wg.Done()
	id := r.ID()
	src := netip.AddrPortFrom(netipAddr(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(netipAddr(id.LocalAddress), id.LocalPort)
	log := g.log.With("proto", "tcp", "src", src, "dst", dst)
	target, reason, ok := g.target(src, dst, "tcp")
	if !ok {
		log.Debug("destination refused", "reason", reason)
		r.Complete(true) // an RST: the client's connect fails at once
		return
	}
	ctx, cancel := context.WithTimeout(g.ctx, dialTimeout)
	out, err := g.cfg.Dial(ctx, "tcp", target.String())
	cancel()
	if err != nil {
		g.m.dialErrors.WithLabelValues("tcp").Inc()
		log.Debug("dial failed", "err", err)
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, tErr := r.CreateEndpoint(&wq)
	if tErr != nil {
		out.Close()
		g.m.endpointErr.Inc()
		log.Debug("create endpoint failed", "err", tErr.String())
		r.Complete(true)
		return
	}
	r.Complete(false)
	ep.SocketOptions().SetKeepAlive(true)
	if g.cfg.GrowBuffers != nil && g.cfg.GrowBuffers(src.Addr()) {
		g.m.tcpGrowing.Inc()
	} else {
		// Setting a size also turns its auto-tuning off for this flow.
		ep.SocketOptions().SetReceiveBufferSize(gatewayBuffer, true)
		ep.SocketOptions().SetSendBufferSize(gatewayBuffer, true)
	}
	in := gonet.NewTCPConn(&wq, ep)
	if !g.track(in) {
		out.Close()
		return
	}
	if !g.track(out) {
		g.untrack(in)
		return
	}
	g.m.flowsTotal.WithLabelValues("tcp").Inc()
	active := g.m.flowsActive.WithLabelValues("tcp")
	active.Inc()
	defer active.Dec()
	log.Debug("flow open")
	// EOF from one side half-closes the other (a peer's shutdown(SHUT_WR)
	// reaches the server, which may still answer); an error, or Close
	// cancelling g.ctx, ends both.
	st, err := relayer.Relay(g.ctx, in, out)
	g.untrack(in)
	g.untrack(out)
	log.Debug("flow closed", "bytes_up", st.AToB, "bytes_down", st.BToA, "err", err)
}

// relayBufSize is the copy buffer of one relay direction, larger than the
// shared relay's 64 KiB default: with GRO, gVisor holds up to 64 KiB
// segments and one read drains several at once, so a bigger buffer means
// fewer gVisor reads and write(2) calls per flow. (No splice is possible
// with a gonet end; splice.Relay copies through this buffer.)
const relayBufSize = 256 << 10

// relayer copies the gateway's TCP flows, pooling relayBufSize buffers.
var relayer = splice.NewRelayer(relayBufSize)
