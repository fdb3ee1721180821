package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// Topology of the switching tests, all on loopback:
//
//	client Device (ChannelTUN, 100.64.0.2)
//	  SwitchBind ─┬─ gatedBind(real UDP) ──UDP──► 127.0.0.1:P ─┐
//	              └─ StreamBind ─────────TCP──► 127.0.0.1:Q ──┴─ dualTestBind
//	                                              server Device (ChannelTUN, 100.64.0.1)
//
// The server listens on both, like the gateway (agent's dual bind), and
// answers on the path the last authenticated packet came from. The gate
// drops the client's UDP sends, as an nft rule dropping UDP to the NodePort
// does.

// gatedBind is a real bind whose outgoing (drop) or incoming (dropIn)
// packets can be dropped.
type gatedBind struct {
	conn.Bind
	drop, dropIn atomic.Bool
	sent         atomic.Int64 // packets that went out
}

func (g *gatedBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := g.Bind.Open(port)
	for i, f := range fns {
		fns[i] = func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			n, err := f(bufs, sizes, eps)
			if g.dropIn.Load() {
				for j := range n {
					sizes[j] = 0 // wireguard-go skips empty entries
				}
			}
			return n, err
		}
	}
	return fns, actual, err
}

func (g *gatedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if g.drop.Load() {
		return nil // like a firewall's drop: the sender learns nothing
	}
	g.sent.Add(int64(len(bufs)))
	return g.Bind.Send(bufs, ep)
}

// dualTestBind is the gateway's arrangement in miniature: UDP and stream
// server binds under one device, sending by endpoint type.
type dualTestBind struct{ udp, stream conn.Bind }

func (b *dualTestBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	u, actual, err := b.udp.Open(port)
	if err != nil {
		return nil, 0, err
	}
	s, _, err := b.stream.Open(port)
	if err != nil {
		b.udp.Close()
		return nil, 0, err
	}
	return append(u, s...), actual, nil
}
func (b *dualTestBind) Close() error               { return errors.Join(b.udp.Close(), b.stream.Close()) }
func (b *dualTestBind) SetMark(m uint32) error     { return nil }
func (b *dualTestBind) BatchSize() int             { return min(b.udp.BatchSize(), b.stream.BatchSize()) }
func (b *dualTestBind) Shutdown() error            { return b.stream.(shutdowner).Shutdown() }
func (b *dualTestBind) peerEndpoint(string) string { return "" }
func (b *dualTestBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	return b.udp.ParseEndpoint(s)
}
func (b *dualTestBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if _, ok := ep.(*conn.StdNetEndpoint); ok {
		return b.udp.Send(bufs, ep)
	}
	return b.stream.Send(bufs, ep)
}

type switchNet struct {
	server, client *node
	gate           *gatedBind
	sw             *SwitchBind
	udpAddr        string
}

// fastSwitch are timings short enough for a test; wireguard-go still sends
// at most one handshake per 5 s, which bounds how soon a probe can go.
var fastSwitch = SwitchBindConfig{FailAfter: 400 * time.Millisecond, ProbeEvery: time.Second, MaxProbeEvery: 2 * time.Second, ProbeTimeout: 500 * time.Millisecond}

// newSwitchNet starts the dual server and a client on a SwitchBind; with
// udpDead the client's UDP is dropped from the start.
func newSwitchNet(t *testing.T, udpDead bool) *switchNet {
	t.Helper()
	sn := &switchNet{}
	ck := mustKey(t)
	cip := netip.MustParseAddr("100.64.0.2")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sk := mustKey(t)
	sn.server = &node{key: sk, tun: tuntest.NewChannelTUN(), reg: prometheus.NewRegistry(), ip: serverIP}
	slog := testkit.Logger(t).With("node", "server")
	sdev, err := NewDevice(DeviceConfig{
		TUN: sn.server.tun.TUN(), Log: slog, Registerer: sn.server.reg,
		Bind:   &dualTestBind{udp: NewUDPBind(), stream: NewStreamServerBind(StreamServerConfig{Listener: ln, Log: slog})},
		Config: Config{PrivateKey: sk, Peers: []PeerConfig{{PublicKey: ck.PublicKey(), AllowedIPs: hostPrefix(cip)}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sdev.Close() })
	sn.server.dev = sdev
	sn.udpAddr = fmt.Sprintf("127.0.0.1:%d", listenPort(t, sdev))

	sn.client = &node{key: ck, tun: tuntest.NewChannelTUN(), reg: prometheus.NewRegistry(), ip: cip}
	clog := testkit.Logger(t).With("node", "client")
	sn.gate = &gatedBind{Bind: NewUDPBind()}
	sn.gate.drop.Store(udpDead)
	cfg := fastSwitch
	cfg.UDP, cfg.Log, cfg.Registerer = sn.gate, clog, sn.client.reg
	cfg.Stream = NewStreamBind(StreamBindConfig{Dial: tcpDialer(ln.Addr().String()), Log: clog, Registerer: sn.client.reg,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if sn.sw, err = NewSwitchBind(cfg); err != nil {
		t.Fatal(err)
	}
	cdev, err := NewDevice(DeviceConfig{
		TUN: sn.client.tun.TUN(), Bind: sn.sw, Log: clog, Registerer: sn.client.reg,
		Config: Config{PrivateKey: ck, Peers: []PeerConfig{{PublicKey: sk.PublicKey(), AllowedIPs: hostPrefix(serverIP),
			Endpoint: sn.udpAddr, PersistentKeepalive: 25 * time.Second}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cdev.Close() })
	sn.client.dev = cdev
	return sn
}

// serverSees is the endpoint the server answers the client on.
func (sn *switchNet) serverSees(t *testing.T) string {
	t.Helper()
	st, err := sn.server.dev.Status()
	if err != nil || len(st) != 1 {
		t.Fatalf("server status: %v, %v", st, err)
	}
	return st[0].Endpoint
}

func (sn *switchNet) switches(to string) float64 {
	return testutil.ToFloat64(sn.sw.m.switches.WithLabelValues(to))
}

func waitActive(t *testing.T, sn *switchNet, want string, within time.Duration, ping func()) time.Duration {
	t.Helper()
	start := time.Now()
	testkit.WaitFor(t, within, "transport "+want, func() bool {
		ping()
		return sn.sw.Active() == want
	})
	return time.Since(start)
}

// TestSwitchUDPToStreamAndBack: a session on UDP whose UDP stops moves to
// the stream within FailAfter and some ticks, keeps its WireGuard session
// (no second handshake is needed for the stream: the devices keep their
// keys), and returns to UDP once UDP answers a probe.
func TestSwitchUDPToStreamAndBack(t *testing.T) {
	checkGoroutines(t)
	sn := newSwitchNet(t, false)
	ping(t, sn.client, sn.server, 3*time.Second)
	ping(t, sn.server, sn.client, 3*time.Second)
	if got := sn.sw.Active(); got != TransportUDP {
		t.Fatalf("active after the first handshake: got %s, want udp", got)
	}
	if got := sn.serverSees(t); got != sn.gateLocal(t) {
		t.Fatalf("server answers on %q, want the client's UDP address %q", got, sn.gateLocal(t))
	}

	sn.gate.drop.Store(true)
	// Traffic that wants an answer: the client notices nothing comes back.
	took := waitActive(t, sn, TransportStream, 5*time.Second, func() { _ = tryPing(sn.client, sn.server, 50*time.Millisecond) })
	t.Logf("moved to the stream %s after UDP stopped", took.Round(10*time.Millisecond))
	ping(t, sn.client, sn.server, 2*time.Second)
	ping(t, sn.server, sn.client, 2*time.Second) // the server roamed to the stream
	if got := sn.serverSees(t); !strings.HasPrefix(got, "stream:") {
		t.Errorf("server answers on %q, want its stream endpoint", got)
	}
	if got := sn.switches(TransportStream); got != 1 {
		t.Errorf("switches to stream: got %v, want 1", got)
	}

	sent := sn.gate.sent.Load()
	sn.gate.drop.Store(false)
	took = waitActive(t, sn, TransportUDP, 15*time.Second, func() { _ = tryPing(sn.client, sn.server, 50*time.Millisecond) })
	t.Logf("back on UDP %s after it returned", took.Round(10*time.Millisecond))
	if sn.gate.sent.Load() == sent {
		t.Error("back on UDP without a packet sent over UDP")
	}
	ping(t, sn.client, sn.server, 2*time.Second)
	ping(t, sn.server, sn.client, 2*time.Second)
	testkit.WaitFor(t, 2*time.Second, "server answering over UDP", func() bool { return sn.serverSees(t) == sn.gateLocal(t) })
	if got := sn.switches(TransportUDP); got != 1 {
		t.Errorf("switches to udp: got %v, want 1", got)
	}
	if got := testutil.ToFloat64(sn.sw.m.active.WithLabelValues(TransportUDP)); got != 1 {
		t.Errorf("active{udp}: got %v, want 1", got)
	}
	if n, err := testutil.GatherAndCount(sn.client.reg, "bridgetun_tunnel_transport_switches_total"); err != nil || n != 2 {
		t.Errorf("gathered switches series: got %d, %v; want 2 (to=udp, to=stream)", n, err)
	}
}

// TestSwitchOneWayOutageGatewayStillSending: UDP from the workstation is
// lost while the gateway keeps sending over UDP now and then (its TCP
// retransmitting into the outage). Hearing the gateway proves only its
// direction: once the monitor has asked with a handshake (after FailAfter/2
// of silence), only a response counts, so gateway packets at gaps between
// FailAfter/2 and FailAfter no longer keep the session on dead UDP.
func TestSwitchOneWayOutageGatewayStillSending(t *testing.T) {
	checkGoroutines(t)
	sn := newSwitchNet(t, false)
	ping(t, sn.client, sn.server, 3*time.Second)
	ping(t, sn.server, sn.client, 3*time.Second)
	sn.gate.drop.Store(true) // workstation → gateway only
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the gateway's packets, paced (not synchronisation)
		defer wg.Done()
		tick := time.NewTicker(fastSwitch.FailAfter * 3 / 4)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_ = tryPing(sn.server, sn.client, 10*time.Millisecond) // heard by the client; its reply is lost
			}
		}
	}()
	took := waitActive(t, sn, TransportStream, 3*time.Second, func() { _ = tryPing(sn.client, sn.server, 50*time.Millisecond) })
	close(stop)
	wg.Wait()
	t.Logf("moved to the stream %s after UDP out stopped, the gateway sending every %s", took.Round(10*time.Millisecond), fastSwitch.FailAfter*3/4)
	ping(t, sn.client, sn.server, 2*time.Second)
}

// TestSwitchDeadUDPAtStart: with UDP dead from the start the first
// handshake completes over the stream soon after FailAfter (the initiation
// UDP lost is resent there), not after wireguard-go's 5 s retransmit.
func TestSwitchDeadUDPAtStart(t *testing.T) {
	checkGoroutines(t)
	sn := newSwitchNet(t, true)
	start := time.Now()
	ping(t, sn.client, sn.server, 3*time.Second)
	t.Logf("first packet through %s after start", time.Since(start).Round(10*time.Millisecond))
	if got := sn.sw.Active(); got != TransportStream {
		t.Errorf("active: got %s, want stream", got)
	}
	if sn.gate.sent.Load() != 0 {
		t.Errorf("gate passed %d packets, want none", sn.gate.sent.Load())
	}
}

// TestSwitchProbeUnanswered: while UDP stays dead the probes go out over
// UDP and fail, and the session stays on the stream carrying traffic both
// ways.
func TestSwitchProbeUnanswered(t *testing.T) {
	checkGoroutines(t)
	sn := newSwitchNet(t, true)
	ping(t, sn.client, sn.server, 3*time.Second)
	// The probe's initiation is handed to the gate, which drops it.
	testkit.WaitFor(t, 15*time.Second, "a UDP probe", sn.sw.probeSent.Load)
	testkit.WaitFor(t, 5*time.Second, "the probe to end", func() bool { return !sn.sw.probing.Load() })
	if got := sn.sw.Active(); got != TransportStream {
		t.Fatalf("active after an unanswered probe: got %s, want stream", got)
	}
	ping(t, sn.client, sn.server, 2*time.Second)
	ping(t, sn.server, sn.client, 2*time.Second)
	if got := sn.switches(TransportUDP); got != 0 {
		t.Errorf("switches to udp: got %v, want 0", got)
	}
}

// TestSwitchOneWayUDP: UDP that carries the client's packets but not the
// server's answers moves the session to the stream; probes reach the server
// (which answers over UDP, lost, or over the stream), so the bind may try
// UDP again, but never stays there, and traffic both ways keeps flowing.
func TestSwitchOneWayUDP(t *testing.T) {
	checkGoroutines(t)
	sn := newSwitchNet(t, false)
	ping(t, sn.client, sn.server, 3*time.Second)
	sn.gate.dropIn.Store(true)
	waitActive(t, sn, TransportStream, 5*time.Second, func() { _ = tryPing(sn.client, sn.server, 50*time.Millisecond) })
	// Through several probe rounds, traffic keeps flowing both ways.
	deadline := time.Now().Add(12 * time.Second)
	for time.Now().Before(deadline) {
		ping(t, sn.client, sn.server, 3*time.Second)
		ping(t, sn.server, sn.client, 3*time.Second)
	}
	testkit.WaitFor(t, 5*time.Second, "the stream", func() bool {
		_ = tryPing(sn.client, sn.server, 50*time.Millisecond)
		return sn.sw.Active() == TransportStream
	})
	if up, down := sn.switches(TransportUDP), sn.switches(TransportStream); down != up+1 || up > 2 {
		t.Errorf("switches: %v to udp, %v to stream; want at most 2 tries of UDP, each undone", up, down)
	}
}

// gateLocal is the client's UDP address as the server sees it.
func (sn *switchNet) gateLocal(t *testing.T) string {
	t.Helper()
	st, err := sn.client.dev.wg.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(st) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "listen_port="); ok {
			return "127.0.0.1:" + v
		}
	}
	t.Fatal("client reports no listen_port")
	return ""
}

func TestSwitchBindNeedsStream(t *testing.T) {
	if _, err := NewSwitchBind(SwitchBindConfig{}); err == nil {
		t.Error("NewSwitchBind without a stream: got nil error")
	}
}

func TestWantsAnswer(t *testing.T) {
	msg := func(typ byte, n int) []byte { p := make([]byte, n); p[0] = typ; return p }
	for _, tc := range []struct {
		name string
		p    []byte
		want bool
	}{
		{"initiation", msg(msgInitiation, msgInitiationSize), true},
		{"data", msg(msgTransport, msgTransportMinSize+16), true},
		{"keepalive", msg(msgTransport, msgTransportMinSize), false},
		{"response", msg(msgResponse, msgResponseSize), false},
		{"cookie", msg(msgCookieReply, msgCookieReplySize), false},
	} {
		if got := wantsAnswer(tc.p); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
