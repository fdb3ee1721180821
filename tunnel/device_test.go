package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// Topology built by newPair (transport "stream"):
//
//	client Device (ChannelTUN, 100.64.0.N)
//	   StreamBind ──TCP──► 127.0.0.1:port ──► StreamServerBind
//	                                  server Device (ChannelTUN, 100.64.0.1)
//
// For "udp" the same devices talk over wireguard-go's UDP bind on
// 127.0.0.1; clients are configured with the server's endpoint, the server
// learns the clients' endpoints from their packets.

var serverIP = netip.MustParseAddr("100.64.0.1")

type node struct {
	key Key
	tun *tuntest.ChannelTUN
	dev *Device
	reg *prometheus.Registry
	ip  netip.Addr
}

type testNet struct {
	t         *testing.T
	transport string
	compact   Compaction // both ends
	server    *node
	ln        *trackingListener // stream only
	addr      string            // where clients connect
}

func mustKey(t testing.TB) Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func hostPrefix(a netip.Addr) []netip.Prefix { return []netip.Prefix{netip.PrefixFrom(a, a.BitLen())} }

// trackingListener remembers accepted conns so tests can break them.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) closeAll() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	n := len(l.conns)
	l.conns = nil
	return n
}

// newTestNet starts the server device with the given client keys as peers.
func newTestNet(t *testing.T, transport string, clients map[Key]netip.Addr) *testNet {
	t.Helper()
	return newTestNetCompact(t, transport, clients, CompactNone)
}

// newTestNetCompact is newTestNet with compact buffers on both ends.
func newTestNetCompact(t *testing.T, transport string, clients map[Key]netip.Addr, compact Compaction) *testNet {
	t.Helper()
	tn := &testNet{t: t, transport: transport, compact: compact}
	n := &node{key: mustKey(t), tun: tuntest.NewChannelTUN(), reg: prometheus.NewRegistry(), ip: serverIP}
	var peers []PeerConfig
	for k, ip := range clients {
		peers = append(peers, PeerConfig{PublicKey: k, AllowedIPs: hostPrefix(ip)})
	}
	log := testkit.Logger(t).With("node", "server")
	cfg := DeviceConfig{TUN: n.tun.TUN(), Log: log, Registerer: n.reg, Config: Config{PrivateKey: n.key, Peers: peers}, CompactBuffers: compact}
	switch transport {
	case "udp":
		cfg.Bind = NewUDPBind()
	case "stream":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tn.ln = &trackingListener{Listener: ln}
		tn.addr = ln.Addr().String()
		cfg.Bind = NewStreamServerBind(StreamServerConfig{Listener: tn.ln, Log: log, Registerer: n.reg})
	default:
		t.Fatalf("unknown transport %q", transport)
	}
	dev, err := NewDevice(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	n.dev = dev
	tn.server = n
	if transport == "udp" {
		tn.addr = fmt.Sprintf("127.0.0.1:%d", listenPort(t, dev))
	}
	return tn
}

func listenPort(t *testing.T, d *Device) int {
	t.Helper()
	s, err := d.wg.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(s) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "listen_port="); ok {
			p, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	t.Fatal("device reports no listen_port")
	return 0
}

// addClient starts a client device with key k and tunnel address ip.
func (tn *testNet) addClient(k Key, ip netip.Addr) *node {
	t := tn.t
	t.Helper()
	n := &node{key: k, tun: tuntest.NewChannelTUN(), reg: prometheus.NewRegistry(), ip: ip}
	log := testkit.Logger(t).With("node", ip.String())
	peer := PeerConfig{PublicKey: tn.server.key.PublicKey(), AllowedIPs: hostPrefix(serverIP), Endpoint: tn.addr}
	cfg := DeviceConfig{TUN: n.tun.TUN(), Log: log, Registerer: n.reg, Config: Config{PrivateKey: k, Peers: []PeerConfig{peer}}, CompactBuffers: tn.compact}
	switch tn.transport {
	case "udp":
		cfg.Bind = NewUDPBind()
	case "stream":
		cfg.Bind = NewStreamBind(StreamBindConfig{Dial: tcpDialer(tn.addr), Log: log, Registerer: n.reg,
			MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	}
	dev, err := NewDevice(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	n.dev = dev
	return n
}

func tcpDialer(addr string) DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

var pingSeq atomic.Uint32

// pingPacket is tuntest.Ping with a unique IPv4 ID, so a late copy of an
// earlier attempt is never mistaken for this one. Nothing on the path
// checks ICMP checksums, but the IP header checksum is kept right.
func pingPacket(dst, src netip.Addr) ([]byte, uint16) {
	p := tuntest.Ping(dst, src)
	id := uint16(pingSeq.Add(1))
	binary.BigEndian.PutUint16(p[4:], id)
	setIPv4HeaderChecksum(p)
	return p, id
}

// setIPv4HeaderChecksum recomputes the checksum of p's 20-byte IPv4 header.
func setIPv4HeaderChecksum(p []byte) {
	p[10], p[11] = 0, 0
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
}

// ping sends IPv4 packets from one TUN until one arrives at the other TUN,
// retrying while the tunnel (re)connects, and fails after timeout.
func ping(t *testing.T, from, to *node, timeout time.Duration) {
	t.Helper()
	if err := tryPing(from, to, timeout); err != nil {
		t.Fatalf("ping %s -> %s: %v", from.ip, to.ip, err)
	}
}

func tryPing(from, to *node, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var first uint16
	for attempt := 0; ; attempt++ {
		pkt, id := pingPacket(to.ip, from.ip)
		if attempt == 0 {
			first = id
		}
		select {
		case from.tun.Outbound <- pkt:
		case <-deadline.C:
			return fmt.Errorf("timed out after %v sending attempt %d", timeout, attempt)
		}
		retry := time.NewTimer(250 * time.Millisecond)
	wait:
		for {
			select {
			case got := <-to.tun.Inbound:
				if len(got) < 20 || netip.AddrFrom4([4]byte(got[12:16])) != from.ip {
					continue // another client's packet
				}
				if gotID := binary.BigEndian.Uint16(got[4:]); gotID-first < 0x8000 {
					retry.Stop()
					return nil
				}
			case <-retry.C:
				break wait
			case <-deadline.C:
				retry.Stop()
				return fmt.Errorf("no packet after %d attempts in %v", attempt+1, timeout)
			}
		}
	}
}

// checkGoroutines fails the test if goroutines started during it outlive
// its cleanups. Register it first so it runs last.
func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() { testkit.WaitGoroutines(t, 5*time.Second, before) })
}

func dropped(n *node, reason string) float64 {
	return testutil.ToFloat64(n.dev.metricsFor().dropped.WithLabelValues(reason))
}

var transports = []string{"udp", "stream"}

func TestPairRoundTrip(t *testing.T) {
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			checkGoroutines(t)
			ck := mustKey(t)
			cip := netip.MustParseAddr("100.64.0.2")
			tn := newTestNet(t, transport, map[Key]netip.Addr{ck.PublicKey(): cip})
			c := tn.addClient(ck, cip)
			// 3s: the first handshake must not wait for wireguard-go's 5s
			// retransmit (the stream client resends the initiation it
			// had to drop before the stream was up).
			ping(t, c, tn.server, 3*time.Second)
			ping(t, tn.server, c, 10*time.Second)

			st, err := c.dev.Status()
			if err != nil {
				t.Fatal(err)
			}
			if len(st) != 1 {
				t.Fatalf("client status: got %d peers, want 1", len(st))
			}
			if got, want := st[0].PublicKey, tn.server.key.PublicKey(); got != want {
				t.Errorf("status public key: got %s, want %s", got, want)
			}
			if st[0].LastHandshake.IsZero() || st[0].TxBytes == 0 || st[0].RxBytes == 0 {
				t.Errorf("status after ping: got handshake %v tx %d rx %d, want all set", st[0].LastHandshake, st[0].TxBytes, st[0].RxBytes)
			}
			// At least the ping itself; the handshake may or may not be
			// counted separately (a stream client may hold and resend it).
			if got := testutil.ToFloat64(c.dev.metricsFor().txPackets); got < 1 {
				t.Errorf("client tx packets: got %v, want >= 1", got)
			}
			if got := testutil.ToFloat64(tn.server.dev.metricsFor().rxBytes); got == 0 {
				t.Errorf("server rx bytes: got %v, want > 0", got)
			}
			for _, name := range []string{"bridgetun_tunnel_rx_bytes_total", "bridgetun_tunnel_tx_bytes_total",
				"bridgetun_tunnel_rx_packets_total", "bridgetun_tunnel_tx_packets_total",
				"bridgetun_tunnel_dropped_packets_total", "bridgetun_tunnel_stream_reconnects_total"} {
				if n, err := testutil.GatherAndCount(c.reg, name); err != nil || n == 0 {
					t.Errorf("gather %s: got %d series, %v; want >= 1", name, n, err)
				}
			}
		})
	}
}

func TestStreamReconnect(t *testing.T) {
	checkGoroutines(t)
	ck := mustKey(t)
	cip := netip.MustParseAddr("100.64.0.2")
	tn := newTestNet(t, "stream", map[Key]netip.Addr{ck.PublicKey(): cip})
	c := tn.addClient(ck, cip)
	ping(t, c, tn.server, 10*time.Second)

	for round := 1; round <= 2; round++ {
		if got, want := tn.ln.closeAll(), streamsFromEnv(); got != want {
			t.Fatalf("round %d: closed %d server-side streams, want %d (one per client stream)", round, got, want)
		}
		// Both directions must recover under the same devices; the
		// server direction proves the server roamed to the new stream.
		ping(t, c, tn.server, 10*time.Second)
		ping(t, tn.server, c, 10*time.Second)
		if got := testutil.ToFloat64(c.dev.metricsFor().reconnects); got < float64(round) {
			t.Errorf("round %d: reconnects: got %v, want >= %d", round, got, round)
		}
	}
}

func TestStreamTwoClients(t *testing.T) {
	checkGoroutines(t)
	k1, k2 := mustKey(t), mustKey(t)
	ip1, ip2 := netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("100.64.0.3")
	tn := newTestNet(t, "stream", map[Key]netip.Addr{k1.PublicKey(): ip1, k2.PublicKey(): ip2})
	c1, c2 := tn.addClient(k1, ip1), tn.addClient(k2, ip2)
	ping(t, c1, tn.server, 10*time.Second)
	ping(t, c2, tn.server, 10*time.Second)
	ping(t, tn.server, c1, 10*time.Second)
	ping(t, tn.server, c2, 10*time.Second)
}

func TestStreamGarbage(t *testing.T) {
	ck := mustKey(t)
	cip := netip.MustParseAddr("100.64.0.2")
	tn := newTestNet(t, "stream", map[Key]netip.Addr{ck.PublicKey(): cip})
	c := tn.addClient(ck, cip)
	ping(t, c, tn.server, 10*time.Second)

	random := make([]byte, 64)
	for i := range random {
		random[i] = byte(i*131 + 7)
	}
	random[0], random[1], random[2] = 0, 62, 0xff // a whole frame of junk
	tests := []struct {
		name string
		data []byte
	}{
		{"random bytes", random},
		{"empty frame", []byte{0, 0}},
		{"length beyond data", append([]byte{0x03, 0xe8}, make([]byte, 10)...)},
		{"wrong size initiation", append([]byte{0, 8}, 1, 0, 0, 0, 0, 0, 0, 0)},
	}
	for i, tt := range tests {
		gc, err := net.Dial("tcp", tn.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := gc.Write(tt.data); err != nil {
			t.Fatalf("%s: write: %v", tt.name, err)
		}
		gc.(*net.TCPConn).CloseWrite()
		want := float64(i + 1)
		testkit.WaitFor(t, 5*time.Second, fmt.Sprintf("%s counted as malformed", tt.name), func() bool {
			return dropped(tn.server, dropMalformed) >= want
		})
		gc.Close()
		ping(t, c, tn.server, 10*time.Second)
	}
	ping(t, tn.server, c, 10*time.Second)
}

func TestUnknownPeer(t *testing.T) {
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			ck := mustKey(t)
			cip := netip.MustParseAddr("100.64.0.2")
			tn := newTestNet(t, transport, map[Key]netip.Addr{ck.PublicKey(): cip})
			intruder := tn.addClient(mustKey(t), netip.MustParseAddr("100.64.0.9"))
			c := tn.addClient(ck, cip)

			if err := tryPing(intruder, tn.server, time.Second); err == nil {
				t.Fatal("unknown peer's packet reached the server TUN")
			}
			testkit.WaitFor(t, 5*time.Second, "unknown_peer counted", func() bool {
				return dropped(tn.server, dropUnknownPeer) >= 1
			})
			ping(t, c, tn.server, 10*time.Second)
		})
	}
}

func TestAddRemovePeer(t *testing.T) {
	ck := mustKey(t)
	cip := netip.MustParseAddr("100.64.0.2")
	tn := newTestNet(t, "stream", nil)
	c := tn.addClient(ck, cip)
	if err := tn.server.dev.AddPeer(PeerConfig{PublicKey: ck.PublicKey(), AllowedIPs: hostPrefix(cip)}); err != nil {
		t.Fatal(err)
	}
	ping(t, c, tn.server, 10*time.Second)
	other := mustKey(t).PublicKey()
	if err := tn.server.dev.AddPeer(PeerConfig{PublicKey: other, AllowedIPs: hostPrefix(netip.MustParseAddr("100.64.0.7"))}); err != nil {
		t.Fatal(err)
	}
	ping(t, tn.server, c, 10*time.Second) // adding a peer left the session alone
	if err := tn.server.dev.RemovePeer(other); err != nil {
		t.Fatal(err)
	}
	st, err := tn.server.dev.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].PublicKey != ck.PublicKey() {
		t.Fatalf("status after remove: got %+v, want only %s", st, ck.PublicKey())
	}
	if got, want := st[0].AllowedIPs, hostPrefix(cip); len(got) != 1 || got[0] != want[0] {
		t.Errorf("allowed ips: got %v, want %v", got, want)
	}
	if !strings.HasPrefix(st[0].Endpoint, "stream:") {
		t.Errorf("server endpoint: got %q, want stream:<id>/<addr>", st[0].Endpoint)
	}
}

func TestDeviceCloseIdempotent(t *testing.T) {
	tn := newTestNet(t, "stream", nil)
	for i := range 2 {
		if err := tn.server.dev.Close(); err != nil {
			t.Fatalf("close #%d: %v", i+1, err)
		}
	}
}

// TestCompactRoundTrip runs packets on both sides of the 2 KiB line through
// devices with compact buffers, over each transport: our binds, metrics and
// inbound limit must carry packets in small buffers as well as large ones.
func TestCompactRoundTrip(t *testing.T) {
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			checkGoroutines(t)
			ck := mustKey(t)
			cip := netip.MustParseAddr("100.64.0.2")
			tn := newTestNetCompact(t, transport, map[Key]netip.Addr{ck.PublicKey(): cip}, CompactBoth)
			c := tn.addClient(ck, cip)
			for _, n := range []*node{tn.server, c} {
				if out, in := n.dev.wg.CompactBuffers(); !out || !in {
					t.Fatalf("%s: compact buffers outbound %v inbound %v, want both on", n.ip, out, in)
				}
			}
			ping(t, c, tn.server, 3*time.Second)
			ping(t, tn.server, c, 10*time.Second)
			for _, size := range []int{1400, 1990, 3000} {
				for _, dir := range [][2]*node{{c, tn.server}, {tn.server, c}} {
					pkt := paddedPacket(dir[1].ip, dir[0].ip, size)
					dir[0].tun.Outbound <- pkt
					select {
					case got := <-dir[1].tun.Inbound:
						if !bytes.Equal(got, pkt) {
							t.Fatalf("%d-byte packet %s -> %s changed in transit", size, dir[0].ip, dir[1].ip)
						}
					case <-time.After(5 * time.Second):
						t.Fatalf("%d-byte packet %s -> %s did not arrive", size, dir[0].ip, dir[1].ip)
					}
				}
			}
		})
	}
}

// TestInlineLoneRoundTrip carries request/response pings over each
// transport through devices with inline lone packets (the default; our
// fork): the lone packets must take the inline path both ways through our
// binds, metrics and inbound limit, and BRIDGETUN_WG_INLINE=0 turns it off.
func TestInlineLoneRoundTrip(t *testing.T) {
	for _, transport := range transports {
		for _, env := range []string{"", "0"} {
			t.Run(transport+"/BRIDGETUN_WG_INLINE="+env, func(t *testing.T) {
				t.Setenv("BRIDGETUN_WG_INLINE", env)
				checkGoroutines(t)
				ck := mustKey(t)
				cip := netip.MustParseAddr("100.64.0.2")
				tn := newTestNet(t, transport, map[Key]netip.Addr{ck.PublicKey(): cip})
				c := tn.addClient(ck, cip)
				for range 5 {
					ping(t, c, tn.server, 10*time.Second)
					ping(t, tn.server, c, 10*time.Second)
				}
				for _, n := range []*node{tn.server, c} {
					on, sent, received := n.dev.wg.InlineLonePackets()
					if want := env == ""; on != want {
						t.Fatalf("%s: inline lone packets %v, want %v", n.ip, on, want)
					}
					if on && (sent == 0 || received == 0) {
						t.Errorf("%s: %d packets sent and %d received inline, want both > 0", n.ip, sent, received)
					}
					if !on && sent+received != 0 {
						t.Errorf("%s: %d packets sent and %d received inline with it off", n.ip, sent, received)
					}
				}
			})
		}
	}
}

// paddedPacket is an IPv4 echo request of size bytes with a valid header.
func paddedPacket(dst, src netip.Addr, size int) []byte {
	p, _ := pingPacket(dst, src)
	for i := len(p); i < size; i++ {
		p = append(p, byte(i))
	}
	binary.BigEndian.PutUint16(p[2:], uint16(size))
	setIPv4HeaderChecksum(p)
	return p
}
