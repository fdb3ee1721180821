package client

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.zx2c4.com/wireguard/tun"
)

// Addresses of the rows: the workstation (local), a cluster service and the
// gateway's resolver.
const (
	local4 = "100.96.0.2"
	svc4   = "10.200.2.2"
	gw4    = "100.96.0.1"
	local6 = "fd00:ec::2"
	svc6   = "fd00:ec::99"
)

func TestInboundFilter(t *testing.T) {
	ourSYN := ip4(local4, svc4, protoTCP, tcpSeg(40000, 80, tcpSYN))
	ourQuery := ip4(local4, gw4, protoUDP, udpDgram(41000, 53))
	ourEcho := ip4(local4, svc4, protoICMP, icmpMsg(icmpEchoRequest, 0, 7, nil))
	ourSYN6 := ip6(local6, svc6, protoTCP, tcpSeg(40000, 443, tcpSYN))
	for _, tc := range []struct {
		name   string
		local  string        // the tunnel address; "" = local4
		out    [][]byte      // sent into the tunnel first
		allow  []uint16      // AllowInbound calls
		revoke []uint16      // then RevokeInbound calls
		after  time.Duration // between the sending and the arrival
		in     []byte        // arrives from the tunnel
		want   string        // "pass", or the proto label it is dropped under
	}{
		// New connections: only to an intercept's port on the tunnel address.
		{name: "SYN to a port nobody intercepts", in: ip4(gw4, local4, protoTCP, tcpSeg(5555, 22, tcpSYN)), want: "tcp"},
		{name: "SYN to the split-DNS port", in: ip4(gw4, local4, protoTCP, tcpSeg(5555, 53, tcpSYN)), want: "tcp"},
		{name: "SYN to an intercept's port", allow: []uint16{8080}, in: ip4(gw4, local4, protoTCP, tcpSeg(5555, 8080, tcpSYN)), want: "pass"},
		{name: "data to an intercept's port", allow: []uint16{8080}, in: ip4(gw4, local4, protoTCP, tcpSeg(5555, 8080, tcpACK)), want: "pass"},
		{name: "intercept's port on another address", allow: []uint16{8080}, in: ip4(gw4, "100.96.0.3", protoTCP, tcpSeg(5555, 8080, tcpSYN)), want: "tcp"},
		{name: "intercept's port, revoked", allow: []uint16{8080}, revoke: []uint16{8080}, in: ip4(gw4, local4, protoTCP, tcpSeg(5555, 8080, tcpSYN)), want: "tcp"},
		{name: "intercept's port allowed twice, revoked once", allow: []uint16{8080, 8080}, revoke: []uint16{8080}, in: ip4(gw4, local4, protoTCP, tcpSeg(5555, 8080, tcpSYN)), want: "pass"},
		{name: "UDP to an intercept's port", allow: []uint16{8080}, in: ip4(gw4, local4, protoUDP, udpDgram(5555, 8080)), want: "udp"},
		// TCP replies to connections the workstation opened.
		{name: "SYN-ACK to our SYN", out: [][]byte{ourSYN}, in: ip4(svc4, local4, protoTCP, tcpSeg(80, 40000, tcpSYN|tcpACK)), want: "pass"},
		{name: "from another remote port", out: [][]byte{ourSYN}, in: ip4(svc4, local4, protoTCP, tcpSeg(81, 40000, tcpSYN|tcpACK)), want: "tcp"},
		{name: "from another remote address", out: [][]byte{ourSYN}, in: ip4(gw4, local4, protoTCP, tcpSeg(80, 40000, tcpSYN|tcpACK)), want: "tcp"},
		{name: "to another local port", out: [][]byte{ourSYN}, in: ip4(svc4, local4, protoTCP, tcpSeg(80, 40001, tcpSYN|tcpACK)), want: "tcp"},
		{name: "SYN we sent from another source address", out: [][]byte{ip4("192.168.1.5", svc4, protoTCP, tcpSeg(40000, 80, tcpSYN))},
			in: ip4(svc4, local4, protoTCP, tcpSeg(80, 40000, tcpSYN|tcpACK)), want: "tcp"},
		{name: "four days idle", out: [][]byte{ourSYN}, after: 4 * 24 * time.Hour, in: ip4(svc4, local4, protoTCP, tcpSeg(80, 40000, tcpACK)), want: "pass"},
		{name: "six days idle", out: [][]byte{ourSYN}, after: 6 * 24 * time.Hour, in: ip4(svc4, local4, protoTCP, tcpSeg(80, 40000, tcpACK)), want: "tcp"},
		{name: "a minute after our FIN", out: [][]byte{ourSYN, ip4(local4, svc4, protoTCP, tcpSeg(40000, 80, tcpFIN|tcpACK))},
			after: time.Minute, in: ip4(svc4, local4, protoTCP, tcpSeg(80, 40000, tcpFIN|tcpACK)), want: "pass"},
		{name: "three minutes after our FIN and ACK", out: [][]byte{ourSYN, ip4(local4, svc4, protoTCP, tcpSeg(40000, 80, tcpFIN|tcpACK)), ip4(local4, svc4, protoTCP, tcpSeg(40000, 80, tcpACK))},
			after: 3 * time.Minute, in: ip4(svc4, local4, protoTCP, tcpSeg(80, 40000, tcpACK)), want: "tcp"},
		{name: "after our RST", out: [][]byte{ourSYN, ip4(local4, svc4, protoTCP, tcpSeg(40000, 80, tcpRST))}, in: ip4(svc4, local4, protoTCP, tcpSeg(80, 40000, tcpACK)), want: "tcp"},
		{name: "RST alone opens nothing", out: [][]byte{ip4(local4, svc4, protoTCP, tcpSeg(40000, 80, tcpRST|tcpACK))}, in: ip4(svc4, local4, protoTCP, tcpSeg(80, 40000, tcpACK)), want: "tcp"},
		{name: "TCP header cut before the ports", in: ip4(svc4, local4, protoTCP, []byte{0, 80}), want: "tcp"},
		// UDP answers to datagrams the workstation sent.
		{name: "DNS answer to our query", out: [][]byte{ourQuery}, in: ip4(gw4, local4, protoUDP, udpDgram(53, 41000)), want: "pass"},
		{name: "DNS answer after the timeout", out: [][]byte{ourQuery}, after: udpFlowTimeout + time.Second, in: ip4(gw4, local4, protoUDP, udpDgram(53, 41000)), want: "udp"},
		{name: "datagram from another port", out: [][]byte{ourQuery}, in: ip4(gw4, local4, protoUDP, udpDgram(54, 41000)), want: "udp"},
		{name: "unsolicited datagram to the split-DNS port", in: ip4(gw4, local4, protoUDP, udpDgram(41000, 53)), want: "udp"},
		// ICMP: echo replies and errors about our own flows.
		{name: "echo reply to our request", out: [][]byte{ourEcho}, in: ip4(svc4, local4, protoICMP, icmpMsg(icmpEchoReply, 0, 7, nil)), want: "pass"},
		{name: "echo reply with another id", out: [][]byte{ourEcho}, in: ip4(svc4, local4, protoICMP, icmpMsg(icmpEchoReply, 0, 8, nil)), want: "icmp"},
		{name: "echo reply after the timeout", out: [][]byte{ourEcho}, after: icmpFlowTimeout + time.Second, in: ip4(svc4, local4, protoICMP, icmpMsg(icmpEchoReply, 0, 7, nil)), want: "icmp"},
		{name: "echo request from the gateway", in: ip4(gw4, local4, protoICMP, icmpMsg(icmpEchoRequest, 0, 7, nil)), want: "icmp"},
		{name: "frag-needed about our TCP flow", out: [][]byte{ourSYN}, in: ip4(gw4, local4, protoICMP, icmpMsg(icmpUnreachable, 4, 0, quote(ourSYN))), want: "pass"},
		{name: "frag-needed about a flow we do not have", in: ip4(gw4, local4, protoICMP, icmpMsg(icmpUnreachable, 4, 0, quote(ourSYN))), want: "icmp"},
		{name: "unreachable quoting someone else's packet", out: [][]byte{ourSYN},
			in: ip4(gw4, local4, protoICMP, icmpMsg(icmpUnreachable, 3, 0, quote(ip4("100.96.0.3", svc4, protoTCP, tcpSeg(40000, 80, tcpSYN))))), want: "icmp"},
		{name: "port unreachable about our query", out: [][]byte{ourQuery}, in: ip4(gw4, local4, protoICMP, icmpMsg(icmpUnreachable, 3, 0, quote(ourQuery))), want: "pass"},
		{name: "time exceeded about our echo", out: [][]byte{ourEcho}, in: ip4(gw4, local4, protoICMP, icmpMsg(icmpTimeExceeded, 0, 0, quote(ourEcho))), want: "pass"},
		{name: "redirect", out: [][]byte{ourSYN}, in: ip4(gw4, local4, protoICMP, icmpMsg(5, 0, 0, quote(ourSYN))), want: "icmp"},
		{name: "ICMP header cut short", in: ip4(gw4, local4, protoICMP, []byte{3, 4}), want: "icmp"},
		// Fragments, other protocols, garbage.
		{name: "non-first fragment", in: frag4(ip4(gw4, local4, protoUDP, udpDgram(1, 2)), 185), want: "pass"},
		{name: "first fragment to a closed port", in: frag4(ip4(gw4, local4, protoTCP, tcpSeg(5555, 22, tcpSYN)), 0), want: "tcp"},
		{name: "GRE", in: ip4(gw4, local4, 47, make([]byte, 8)), want: "other"},
		{name: "not IP", in: []byte{0x50, 1, 2, 3}, want: "other"},
		{name: "IPv4 header cut short", in: ip4(gw4, local4, protoTCP, tcpSeg(5555, 22, tcpSYN))[:12], want: "other"},
		{name: "empty", in: []byte{}, want: "other"},
		{name: "IPv6 to an IPv4 workstation", in: ip6(svc6, local6, protoTCP, tcpSeg(5555, 22, tcpSYN)), want: "tcp"},
		// IPv6.
		{name: "v6 SYN to a closed port", local: local6, in: ip6(svc6, local6, protoTCP, tcpSeg(5555, 22, tcpSYN)), want: "tcp"},
		{name: "v6 SYN to an intercept's port", local: local6, allow: []uint16{8080}, in: ip6(svc6, local6, protoTCP, tcpSeg(5555, 8080, tcpSYN)), want: "pass"},
		{name: "v6 SYN-ACK to our SYN", local: local6, out: [][]byte{ourSYN6}, in: ip6(svc6, local6, protoTCP, tcpSeg(443, 40000, tcpSYN|tcpACK)), want: "pass"},
		{name: "v6 SYN-ACK behind a hop-by-hop header", local: local6, out: [][]byte{ourSYN6},
			in: ip6(svc6, local6, 0, append([]byte{protoTCP, 0, 1, 4, 0, 0, 0, 0}, tcpSeg(443, 40000, tcpSYN|tcpACK)...)), want: "pass"},
		{name: "v6 closed port behind a destination-options header", local: local6,
			in: ip6(svc6, local6, 60, append([]byte{protoTCP, 0, 1, 4, 0, 0, 0, 0}, tcpSeg(5555, 22, tcpSYN)...)), want: "tcp"},
		{name: "v6 non-first fragment", local: local6, in: ip6(svc6, local6, 44, append([]byte{protoUDP, 0, 0x05, 0xa8, 0, 0, 0, 1}, make([]byte, 16)...)), want: "pass"},
		{name: "v6 first fragment to a closed port", local: local6, in: ip6(svc6, local6, 44, append([]byte{protoTCP, 0, 0, 1, 0, 0, 0, 1}, tcpSeg(5555, 22, tcpSYN)...)), want: "tcp"},
		{name: "v6 packet too big about our flow", local: local6, out: [][]byte{ourSYN6}, in: ip6(svc6, local6, protoICMPv6, icmpMsg(icmp6TooBig, 0, 0, quote(ourSYN6))), want: "pass"},
		{name: "v6 packet too big about a flow we do not have", local: local6, in: ip6(svc6, local6, protoICMPv6, icmpMsg(icmp6TooBig, 0, 0, quote(ourSYN6))), want: "icmp"},
		{name: "v6 echo reply to our request", local: local6, out: [][]byte{ip6(local6, svc6, protoICMPv6, icmpMsg(icmp6EchoRequest, 0, 9, nil))},
			in: ip6(svc6, local6, protoICMPv6, icmpMsg(icmp6EchoReply, 0, 9, nil)), want: "pass"},
		{name: "v6 echo request", local: local6, in: ip6(svc6, local6, protoICMPv6, icmpMsg(icmp6EchoRequest, 0, 9, nil)), want: "icmp"},
		{name: "v6 neighbor solicitation", local: local6, in: ip6(svc6, local6, protoICMPv6, icmpMsg(135, 0, 0, make([]byte, 16))), want: "icmp"},
		{name: "v6 ICMPv4 inside", local: local6, in: ip6(svc6, local6, protoICMP, icmpMsg(icmpEchoReply, 0, 9, nil)), want: "icmp"},
		{name: "IPv4 to an IPv6 workstation", local: local6, in: ip4(gw4, local4, protoTCP, tcpSeg(5555, 22, tcpSYN)), want: "tcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := local4
			if tc.local != "" {
				addr = tc.local
			}
			f, dev, clk := newTestFilter(t, addr)
			for _, p := range tc.allow {
				f.AllowInbound(p)
			}
			for _, p := range tc.revoke {
				f.RevokeInbound(p)
			}
			dev.send(t, f, tc.out...)
			*clk += int64(tc.after)
			dev.written = nil
			if n, err := f.Write([][]byte{withHeadroom(tc.in)}, headroom); err != nil || n != 1 {
				t.Fatalf("Write: got %d, %v, want 1, nil", n, err)
			}
			got := "pass"
			if len(dev.written) == 0 {
				got = droppedLabel(t, f)
			} else if !bytes.Equal(dev.written[0], tc.in) {
				t.Fatalf("written: got % x, want % x", dev.written[0], tc.in)
			}
			if got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

// A batch with drops reaches the device as the packets that pass, in order,
// at the caller's offset, and the caller's slice is left as it was.
func TestInboundFilterBatch(t *testing.T) {
	f, dev, _ := newTestFilter(t, local4)
	f.AllowInbound(8080)
	closed := ip4(gw4, local4, protoTCP, tcpSeg(5555, 22, tcpSYN))
	open1 := ip4(gw4, local4, protoTCP, tcpSeg(5555, 8080, tcpSYN))
	open2 := ip4(gw4, local4, protoTCP, tcpSeg(5556, 8080, tcpSYN))
	stray := ip4(gw4, local4, protoUDP, udpDgram(53, 9))
	bufs := [][]byte{withHeadroom(open1), withHeadroom(closed), withHeadroom(open2), withHeadroom(stray)}
	before := append([][]byte(nil), bufs...)
	if n, err := f.Write(bufs, headroom); err != nil || n != len(bufs) {
		t.Fatalf("Write: got %d, %v, want %d, nil", n, err, len(bufs))
	}
	if len(dev.written) != 2 || !bytes.Equal(dev.written[0], open1) || !bytes.Equal(dev.written[1], open2) {
		t.Fatalf("written: got %d packets, want the two to port 8080 in order", len(dev.written))
	}
	for i := range bufs {
		if &bufs[i][0] != &before[i][0] {
			t.Errorf("bufs[%d] was replaced", i)
		}
	}
	if got := testutil.ToFloat64(f.dropped[dropTCP]); got != 1 {
		t.Errorf("tcp drops: got %v, want 1", got)
	}
	if got := testutil.ToFloat64(f.dropped[dropUDP]); got != 1 {
		t.Errorf("udp drops: got %v, want 1", got)
	}
	// A batch that is dropped whole never reaches the device.
	dev.written = nil
	if n, err := f.Write([][]byte{withHeadroom(closed)}, headroom); err != nil || n != 1 || len(dev.written) != 0 {
		t.Fatalf("Write of a dropped packet: got %d, %v, %d written, want 1, nil, 0", n, err, len(dev.written))
	}
}

// The per-packet path does not allocate, in either direction.
func TestInboundFilterAllocs(t *testing.T) {
	f, dev, _ := newTestFilter(t, local4)
	f.AllowInbound(8080)
	out := make([][]byte, 64)
	in := make([][]byte, 64)
	for i := range out {
		out[i] = ip4(local4, svc4, protoTCP, tcpSeg(uint16(30000+i), 80, tcpACK))
		reply := ip4(svc4, local4, protoTCP, tcpSeg(80, uint16(30000+i), tcpACK))
		if i%4 == 0 {
			reply = ip4(gw4, local4, protoTCP, tcpSeg(5555, 22, tcpSYN)) // dropped
		}
		in[i] = withHeadroom(reply)
	}
	bufs, sizes := make([][]byte, len(out)), make([]int, len(out))
	for i := range bufs {
		bufs[i] = make([]byte, headroom+1500)
	}
	dev.discard = true
	reads := testing.AllocsPerRun(100, func() {
		dev.out = out
		if _, err := f.Read(bufs, sizes, headroom); err != nil {
			t.Fatal(err)
		}
	})
	writes := testing.AllocsPerRun(100, func() {
		if _, err := f.Write(in, headroom); err != nil {
			t.Fatal(err)
		}
	})
	if reads != 0 || writes != 0 {
		t.Errorf("allocations per batch: got Read %v, Write %v, want 0 and 0", reads, writes)
	}
	if len(dev.written) != 0 {
		t.Fatal("discarding device kept packets")
	}
}

// Read, Write and the port calls run concurrently (go test -race).
func TestInboundFilterConcurrent(t *testing.T) {
	f, _, _ := newTestFilter(t, local4)
	dev := &fakeDev{discard: true}
	f.Device = dev
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		bufs, sizes := [][]byte{make([]byte, headroom+1500)}, []int{0}
		for i := range 2000 {
			dev.mu.Lock()
			dev.out = [][]byte{ip4(local4, svc4, protoUDP, udpDgram(uint16(i), 53))}
			dev.mu.Unlock()
			_, _ = f.Read(bufs, sizes, headroom)
		}
	}()
	go func() {
		defer wg.Done()
		for i := range 2000 {
			_, _ = f.Write([][]byte{withHeadroom(ip4(svc4, local4, protoUDP, udpDgram(53, uint16(i))))}, headroom)
		}
	}()
	go func() {
		defer wg.Done()
		for i := range 2000 {
			f.AllowInbound(uint16(i))
			f.RevokeInbound(uint16(i))
		}
	}()
	wg.Wait()
	for p := range 2000 {
		if f.ports.open(uint16(p)) {
			t.Fatalf("port %d open after as many revokes as allows", p)
		}
	}
}

// A full table evicts the flow that expires first, not a live recent one.
func TestFlowTableEvictsOldest(t *testing.T) {
	ft := newFlowTable()
	// Fill one probe window with flows expiring one after the other.
	base := ft.index(flowKey{proto: protoUDP})
	var keys []flowKey
	for i := 1; len(keys) < flowProbe+1 && i < 1<<20; i++ {
		kk := flowKey{proto: protoUDP, rport: uint16(i), lport: uint16(i >> 16)}
		if ft.index(kk) == base {
			keys = append(keys, kk)
		}
	}
	if len(keys) < flowProbe+1 {
		t.Fatal("found too few keys hashing to one slot")
	}
	for i, kk := range keys[:flowProbe] {
		ft.claim(kk, 0).expires = int64(100 + i)
	}
	ft.claim(keys[flowProbe], 0).expires = 1000
	if ft.find(keys[0], 0) != nil {
		t.Error("the flow expiring first is still there")
	}
	for _, kk := range keys[1:] {
		if ft.find(kk, 0) == nil {
			t.Errorf("flow %+v evicted, want kept", kk)
		}
	}
}

func BenchmarkInboundFilterWrite(b *testing.B) {
	f, dev, _ := newTestFilter(b, local4)
	dev.discard = true
	bufs, sizes := make([][]byte, 128), make([]int, 128)
	out := make([][]byte, 128)
	in := make([][]byte, 128)
	for i := range out {
		bufs[i] = make([]byte, headroom+1500)
		out[i] = ip4(local4, svc4, protoTCP, tcpSeg(uint16(30000+i), 80, tcpACK))
		in[i] = withHeadroom(ip4(svc4, local4, protoTCP, append(tcpSeg(80, uint16(30000+i), tcpACK), make([]byte, 1380)...)))
	}
	dev.out = out
	if _, err := f.Read(bufs, sizes, headroom); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(in) * 1420))
	for b.Loop() {
		_, _ = f.Write(in, headroom)
	}
}

const headroom = 16 // wireguard-go's offset before each packet

func newTestFilter(tb testing.TB, local string) (*inboundFilter, *fakeDev, *int64) {
	tb.Helper()
	dev := &fakeDev{}
	f, err := newInboundFilter(dev, netip.MustParseAddr(local), prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	clk := new(int64)
	f.now = func() int64 { return *clk }
	return f, dev, clk
}

// droppedLabel names the one drop counter that is 1.
func droppedLabel(t *testing.T, f *inboundFilter) string {
	t.Helper()
	got := ""
	for v := dropTCP; v < numVerdicts; v++ {
		switch n := testutil.ToFloat64(f.dropped[v]); n {
		case 0:
		case 1:
			if got != "" {
				t.Fatalf("dropped counted twice: %s and %s", got, verdictLabels[v])
			}
			got = verdictLabels[v]
		default:
			t.Fatalf("dropped{proto=%q}: got %v, want 0 or 1", verdictLabels[v], n)
		}
	}
	if got == "" {
		t.Fatal("not written and not counted as dropped")
	}
	return got
}

// fakeDev is the local stack: Read returns out, Write records (or discards) packets.
type fakeDev struct {
	tun.Device // unused methods panic
	mu         sync.Mutex
	out        [][]byte
	written    [][]byte
	discard    bool
}

func (d *fakeDev) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for ; n < len(d.out) && n < len(bufs); n++ {
		sizes[n] = copy(bufs[n][offset:], d.out[n])
	}
	d.out = nil
	return n, nil
}

func (d *fakeDev) Write(bufs [][]byte, offset int) (int, error) {
	if !d.discard {
		for _, b := range bufs {
			d.written = append(d.written, bytes.Clone(b[offset:]))
		}
	}
	return len(bufs), nil
}

// send makes the local stack send pkts through f.
func (d *fakeDev) send(t *testing.T, f *inboundFilter, pkts ...[]byte) {
	t.Helper()
	if len(pkts) == 0 {
		return
	}
	d.out = pkts
	bufs, sizes := make([][]byte, len(pkts)), make([]int, len(pkts))
	for i := range bufs {
		bufs[i] = make([]byte, headroom+2000)
	}
	if n, err := f.Read(bufs, sizes, headroom); err != nil || n != len(pkts) {
		t.Fatalf("Read: got %d, %v, want %d, nil", n, err, len(pkts))
	}
	for i := range pkts {
		if !bytes.Equal(bufs[i][headroom:headroom+sizes[i]], pkts[i]) {
			t.Fatalf("Read changed packet %d", i)
		}
	}
}

func withHeadroom(pkt []byte) []byte { return append(make([]byte, headroom), pkt...) }

// ---- raw packets ----

func ip4(src, dst string, proto uint8, l4 []byte) []byte {
	b := make([]byte, 20, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(l4)))
	b[8], b[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	return append(b, l4...)
}

// frag4 marks pkt a fragment at offset (in 8-byte units) with more to come.
func frag4(pkt []byte, offset uint16) []byte {
	binary.BigEndian.PutUint16(pkt[6:], 0x2000|offset)
	return pkt
}

func ip6(src, dst string, next uint8, payload []byte) []byte {
	b := make([]byte, 40, 40+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	b[6], b[7] = next, 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	return append(b, payload...)
}

func tcpSeg(sport, dport uint16, flags uint8) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12], b[13] = 5<<4, flags
	return b
}

func udpDgram(sport, dport uint16) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], 12)
	return b
}

// icmpMsg is an ICMP or ICMPv6 message; id goes where echo keeps its identifier.
func icmpMsg(typ, code uint8, id uint16, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	b[0], b[1] = typ, code
	binary.BigEndian.PutUint16(b[4:], id)
	return append(b, body...)
}

// quote is what an ICMP error carries of pkt: its IP header and 8 bytes more.
func quote(pkt []byte) []byte {
	n := 28
	if pkt[0]>>4 == 6 {
		n = 48
	}
	return bytes.Clone(pkt[:min(n, len(pkt))])
}
