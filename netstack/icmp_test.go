package netstack

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// echoRequestPacket builds an echo request from src to dst with ident 0x1234, seq 7.
func echoRequestPacket(src, dst netip.Addr, data string) []byte {
	s, d := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
	if src.Is4() {
		out := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(data))
		ip := header.IPv4(out)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(out)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber), SrcAddr: s, DstAddr: d})
		ip.SetChecksum(^ip.CalculateChecksum())
		ic := header.ICMPv4(out[header.IPv4MinimumSize:])
		ic.SetType(header.ICMPv4Echo)
		ic.SetIdent(0x1234)
		ic.SetSequence(7)
		copy(ic.Payload(), data)
		ic.SetChecksum(^checksum.Checksum(ic, 0))
		return out
	}
	out := make([]byte, header.IPv6MinimumSize+header.ICMPv6EchoMinimumSize+len(data))
	header.IPv6(out).Encode(&header.IPv6Fields{PayloadLength: uint16(len(out) - header.IPv6MinimumSize), TransportProtocol: header.ICMPv6ProtocolNumber, HopLimit: 64, SrcAddr: s, DstAddr: d})
	ic := header.ICMPv6(out[header.IPv6MinimumSize:])
	ic.SetType(header.ICMPv6EchoRequest)
	ic.SetIdent(0x1234)
	ic.SetSequence(7)
	copy(out[header.IPv6MinimumSize+header.ICMPv6EchoMinimumSize:], data)
	ic.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: ic, Src: s, Dst: d}))
	return out
}

func TestBuildEchoReply(t *testing.T) {
	tests := []struct {
		name     string
		src, dst netip.Addr
	}{
		{"ipv4", netip.MustParseAddr("10.77.0.2"), netip.MustParseAddr("192.0.2.30")},
		{"ipv6", netip.MustParseAddr("fd77::2"), netip.MustParseAddr("2001:db8::30")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := echoRequestPacket(tt.src, tt.dst, "payload!")
			parsed, ok := parseEchoRequest(req)
			if !ok {
				t.Fatal("parseEchoRequest(request): got false, want true")
			}
			if parsed.src != tt.src || parsed.dst != tt.dst || string(parsed.data) != "payload!" {
				t.Errorf("parsed request: got %v→%v %q, want %v→%v %q", parsed.src, parsed.dst, parsed.data, tt.src, tt.dst, "payload!")
			}
			reply, err := buildEchoReply(req)
			if err != nil {
				t.Fatalf("buildEchoReply: %v", err)
			}
			if _, ok := parseEchoRequest(reply); ok {
				t.Errorf("parseEchoRequest(reply): got true, want false")
			}
			var gotSrc, gotDst netip.Addr
			var ident, seq uint16
			var payload string
			if tt.src.Is4() {
				ip := header.IPv4(reply)
				if !ip.IsValid(len(reply)) || !ip.IsChecksumValid() {
					t.Fatalf("reply IPv4 header invalid")
				}
				ic := header.ICMPv4(ip.Payload())
				if got, want := ic.Type(), header.ICMPv4EchoReply; got != want {
					t.Errorf("type: got %v, want %v", got, want)
				}
				if got := checksum.Checksum(ic, 0); got != 0xffff {
					t.Errorf("icmp checksum: got sum %#x, want 0xffff", got)
				}
				gotSrc, gotDst = netipAddr(ip.SourceAddress()), netipAddr(ip.DestinationAddress())
				ident, seq, payload = ic.Ident(), ic.Sequence(), string(ic.Payload())
			} else {
				ip := header.IPv6(reply)
				if !ip.IsValid(len(reply)) {
					t.Fatalf("reply IPv6 header invalid")
				}
				ic := header.ICMPv6(ip.Payload())
				if got, want := ic.Type(), header.ICMPv6EchoReply; got != want {
					t.Errorf("type: got %v, want %v", got, want)
				}
				want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: ic, Src: ip.SourceAddress(), Dst: ip.DestinationAddress()})
				if got := ic.Checksum(); got != want {
					t.Errorf("icmpv6 checksum: got %#x, want %#x", got, want)
				}
				gotSrc, gotDst = netipAddr(ip.SourceAddress()), netipAddr(ip.DestinationAddress())
				ident, seq, payload = ic.Ident(), ic.Sequence(), string(ic[header.ICMPv6EchoMinimumSize:])
			}
			if gotSrc != tt.dst || gotDst != tt.src {
				t.Errorf("reply addresses: got %v→%v, want %v→%v", gotSrc, gotDst, tt.dst, tt.src)
			}
			if ident != 0x1234 || seq != 7 || payload != "payload!" {
				t.Errorf("reply echo: got ident %#x seq %d %q, want 0x1234 7 %q", ident, seq, payload, "payload!")
			}
		})
	}
}

// TestHostPing pings the host's loopback the way the gateway pings real
// hosts; it needs ping_group_range or CAP_NET_RAW and skips without either.
func TestHostPing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := hostPing(ctx, netip.MustParseAddr("127.0.0.1"), []byte("bridgetun"))
	if err != nil && isPermission(err) {
		testkit.SkipUnlessCI(t, "no ICMP socket allowed here: %v", err)
	}
	if err != nil {
		t.Fatalf("hostPing(127.0.0.1): %v", err)
	}
}
