package netstack

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// refuseTestPolicy refuses 192.0.2.66 and 2001:db8::66 ("metadata") and
// everything to port 10250 ("kubelet"); the rest is allowed.
func refuseTestPolicy(_, dst netip.AddrPort, _ string) (string, bool) {
	switch {
	case dst.Addr() == netip.MustParseAddr("192.0.2.66") || dst.Addr() == netip.MustParseAddr("2001:db8::66"):
		return "metadata", false
	case dst.Port() == 10250:
		return "kubelet", false
	}
	return "", true
}

// TestPolicyRefusesTCPWithRST: a TCP connect the policy refuses fails at
// once with connection refused (an RST), is never dialled, and is counted
// under the policy's reason; an allowed one connects.
func TestPolicyRefusesTCPWithRST(t *testing.T) {
	live, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	go func() {
		for {
			c, err := live.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tests := []struct {
		name, dst, reason string // reason "" = allowed
	}{
		{name: "metadata v4", dst: "192.0.2.66:80", reason: "metadata"},
		{name: "metadata v6", dst: "[2001:db8::66]:80", reason: "metadata"},
		{name: "kubelet port", dst: "192.0.2.20:10250", reason: "kubelet"},
		{name: "allowed", dst: "192.0.2.20:80"},
		{name: "policy allows, loopback still denied", dst: live.Addr().String(), reason: ReasonLocal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newTestPair(t, GatewayConfig{Allow: refuseTestPolicy})
			for _, d := range []string{"192.0.2.66:80", "[2001:db8::66]:80", "192.0.2.20:10250", "192.0.2.20:80"} {
				p.dialer.route(d, live.Addr().String())
			}
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			start := time.Now()
			c, err := p.client.DialContext(ctx, "tcp", tt.dst)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("dial %s: %v, want connected", tt.dst, err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatalf("dial %s: connected, want refused", tt.dst)
			}
			if !strings.Contains(err.Error(), "refused") {
				t.Errorf("dial %s: got %v, want connection refused", tt.dst, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("refusal took %v, want an immediate RST", d)
			}
			if got := testutil.ToFloat64(p.gw.m.refused.WithLabelValues(tt.reason)); got != 1 {
				t.Errorf("refused_total{reason=%q}: got %v, want 1", tt.reason, got)
			}
			if p.dialer.called(tt.dst) {
				t.Errorf("gateway dialled refused destination %s", tt.dst)
			}
		})
	}
}

// TestPolicyRefusesUDPAndICMPWithUnreachable writes raw datagrams and echo
// requests into the gateway's TUN side, as wireguard-go would, and reads
// back the ICMP destination unreachable (administratively prohibited) that
// quotes them, within a second.
func TestPolicyRefusesUDPAndICMPWithUnreachable(t *testing.T) {
	peer4, peer6 := netip.MustParseAddr("10.77.0.2"), netip.MustParseAddr("fd77::2")
	tests := []struct {
		name   string
		pkt    []byte
		reason string
		v6     bool
	}{
		{name: "udp v4 metadata", pkt: udpPacket(netip.AddrPortFrom(peer4, 40000), netip.MustParseAddrPort("192.0.2.66:53")), reason: "metadata"},
		{name: "udp v6 metadata", pkt: udpPacket(netip.AddrPortFrom(peer6, 40000), netip.MustParseAddrPort("[2001:db8::66]:53")), reason: "metadata", v6: true},
		{name: "udp v4 kubelet port", pkt: udpPacket(netip.AddrPortFrom(peer4, 40000), netip.MustParseAddrPort("192.0.2.20:10250")), reason: "kubelet"},
		{name: "udp v4 loopback", pkt: udpPacket(netip.AddrPortFrom(peer4, 40000), netip.MustParseAddrPort("127.0.0.1:53")), reason: ReasonLocal},
		{name: "echo v4 metadata", pkt: echoRequestPacket(peer4, netip.MustParseAddr("192.0.2.66"), "ping"), reason: "metadata"},
		{name: "echo v6 metadata", pkt: echoRequestPacket(peer6, netip.MustParseAddr("2001:db8::66"), "ping"), reason: "metadata", v6: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			d := newFakeDialer()
			gw, err := NewGateway(GatewayConfig{
				Addrs: []netip.Addr{gatewayV4, gatewayV6}, Allow: refuseTestPolicy,
				Dial: d.Dial, Registerer: reg, Log: testkit.Logger(t),
				pingHost: func(context.Context, netip.Addr, []byte) error {
					t.Error("refused echo request was sent to the host")
					return nil
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer gw.Close()
			const offset = 16
			start := time.Now()
			if _, err := gw.TUN().Write([][]byte{append(make([]byte, offset), tt.pkt...)}, offset); err != nil {
				t.Fatalf("write packet: %v", err)
			}
			got := readPacket(t, gw, time.Second)
			if d := time.Since(start); d > time.Second {
				t.Errorf("answer took %v, want at once", d)
			}
			checkProhibited(t, got, tt.pkt, tt.v6)
			if got := testutil.ToFloat64(gw.m.refused.WithLabelValues(tt.reason)); got != 1 {
				t.Errorf("refused_total{reason=%q}: got %v, want 1", tt.reason, got)
			}
			if len(d.calls) != 0 {
				t.Errorf("gateway dialled %v for a refused flow", d.calls)
			}
		})
	}
}

// checkProhibited checks that got is the administratively-prohibited
// answer to orig: addresses swapped, the right type and code, a valid
// checksum, and orig's header and first transport bytes quoted.
func checkProhibited(t *testing.T, got, orig []byte, v6 bool) {
	t.Helper()
	if !v6 {
		ip, oip := header.IPv4(got), header.IPv4(orig)
		if !ip.IsValid(len(got)) || ip.TransportProtocol() != header.ICMPv4ProtocolNumber {
			t.Fatalf("answer is not an ICMPv4 packet: % x", got)
		}
		if ip.SourceAddress() != oip.DestinationAddress() || ip.DestinationAddress() != oip.SourceAddress() {
			t.Errorf("answer %v -> %v, want %v -> %v", ip.SourceAddress(), ip.DestinationAddress(), oip.DestinationAddress(), oip.SourceAddress())
		}
		ic := header.ICMPv4(ip.Payload())
		if ic.Type() != header.ICMPv4DstUnreachable || ic.Code() != header.ICMPv4AdminProhibited {
			t.Errorf("ICMPv4 type %d code %d, want %d %d (administratively prohibited)", ic.Type(), ic.Code(), header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited)
		}
		if checksum.Checksum(ic, 0) != 0xffff {
			t.Errorf("ICMPv4 checksum invalid")
		}
		checkQuote(t, ic[header.ICMPv4MinimumSize:], orig)
		return
	}
	ip, oip := header.IPv6(got), header.IPv6(orig)
	if !ip.IsValid(len(got)) || ip.TransportProtocol() != header.ICMPv6ProtocolNumber {
		t.Fatalf("answer is not an ICMPv6 packet: % x", got)
	}
	if ip.SourceAddress() != oip.DestinationAddress() || ip.DestinationAddress() != oip.SourceAddress() {
		t.Errorf("answer %v -> %v, want %v -> %v", ip.SourceAddress(), ip.DestinationAddress(), oip.DestinationAddress(), oip.SourceAddress())
	}
	ic := header.ICMPv6(ip.Payload())
	if ic.Type() != header.ICMPv6DstUnreachable || ic.Code() != header.ICMPv6Prohibited {
		t.Errorf("ICMPv6 type %d code %d, want %d %d (administratively prohibited)", ic.Type(), ic.Code(), header.ICMPv6DstUnreachable, header.ICMPv6Prohibited)
	}
	if want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: ic, Src: ip.SourceAddress(), Dst: ip.DestinationAddress()}); ic.Checksum() != want {
		t.Errorf("ICMPv6 checksum %#x, want %#x", ic.Checksum(), want)
	}
	checkQuote(t, ic[header.ICMPv6MinimumSize:], orig)
}

// checkQuote checks that an ICMP error quotes what the sender's stack
// matches on: orig's addresses, protocol and first four transport bytes
// (UDP ports; ICMP type, code and checksum).
func checkQuote(t *testing.T, quote, orig []byte) {
	t.Helper()
	type key struct {
		src, dst tcpip.Address
		proto    tcpip.TransportProtocolNumber
		head     string
	}
	parse := func(b []byte) (key, bool) {
		if len(b) == 0 {
			return key{}, false
		}
		if b[0]>>4 == 4 {
			ip := header.IPv4(b)
			if len(b) < int(ip.HeaderLength())+4 {
				return key{}, false
			}
			return key{ip.SourceAddress(), ip.DestinationAddress(), ip.TransportProtocol(), string(b[ip.HeaderLength():][:4])}, true
		}
		ip := header.IPv6(b)
		if len(b) < header.IPv6MinimumSize+4 {
			return key{}, false
		}
		return key{ip.SourceAddress(), ip.DestinationAddress(), ip.TransportProtocol(), string(b[header.IPv6MinimumSize:][:4])}, true
	}
	got, ok := parse(quote)
	want, _ := parse(orig)
	if !ok || got != want {
		t.Errorf("quoted % x, want a quote of % x", quote, orig)
	}
}

// readPacket reads the next packet the gateway sends towards the tunnel.
func readPacket(t *testing.T, gw *Gateway, within time.Duration) []byte {
	t.Helper()
	got := make(chan []byte, 1)
	go func() {
		bufs, sizes := [][]byte{make([]byte, 65535)}, []int{0}
		if n, err := gw.TUN().Read(bufs, sizes, 0); err == nil && n == 1 {
			got <- bufs[0][:sizes[0]]
		}
		close(got)
	}()
	select {
	case p, ok := <-got:
		if !ok {
			t.Fatal("gateway TUN closed before answering")
		}
		return p
	case <-time.After(within):
		t.Fatalf("no answer from the gateway within %v", within)
		return nil
	}
}

// udpPacket is an IP/UDP datagram from src to dst carrying "q".
func udpPacket(src, dst netip.AddrPort) []byte {
	payload := []byte("q")
	s, d := tcpip.AddrFromSlice(src.Addr().AsSlice()), tcpip.AddrFromSlice(dst.Addr().AsSlice())
	ipLen, proto := header.IPv4MinimumSize, header.IPv4ProtocolNumber
	if src.Addr().Is6() {
		ipLen, proto = header.IPv6MinimumSize, header.IPv6ProtocolNumber
	}
	out := make([]byte, ipLen+header.UDPMinimumSize+len(payload))
	if proto == header.IPv4ProtocolNumber {
		ip := header.IPv4(out)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(out)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber), SrcAddr: s, DstAddr: d})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(out).Encode(&header.IPv6Fields{PayloadLength: uint16(len(out) - ipLen), TransportProtocol: header.UDPProtocolNumber, HopLimit: 64, SrcAddr: s, DstAddr: d})
	}
	u := header.UDP(out[ipLen:])
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, s, d, uint16(len(u)))
	xsum = checksum.Checksum(payload, xsum)
	u.SetChecksum(^u.CalculateChecksum(xsum))
	return out
}
