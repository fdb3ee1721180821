package netstack

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoPacket builds a TCP segment the way gVisor does under host GSO: correct
// lengths, and only the pseudo-header sum in the TCP checksum field.
func gsoPacket(v4 bool, payload []byte, flags header.TCPFlags) ([]byte, stack.GSO) {
	src, dst := tcpip.AddrFrom4([4]byte{10, 77, 0, 1}), tcpip.AddrFrom4([4]byte{10, 77, 0, 2})
	ipLen, gso := header.IPv4MinimumSize, stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: header.TCPChecksumOffset, L3HdrLen: header.IPv4MinimumSize}
	if !v4 {
		src = tcpip.AddrFrom16([16]byte{0xfd, 0x77, 15: 1})
		dst = tcpip.AddrFrom16([16]byte{0xfd, 0x77, 15: 2})
		ipLen, gso.Type, gso.L3HdrLen = header.IPv6MinimumSize, stack.GSOTCPv6, header.IPv6MinimumSize
	}
	const tcpLen = header.TCPMinimumSize + 12 // with a timestamp option's worth of bytes
	pkt := make([]byte, ipLen+tcpLen+len(payload))
	if v4 {
		header.IPv4(pkt).Encode(&header.IPv4Fields{TotalLength: uint16(len(pkt)), ID: 7, TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
	} else {
		header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(len(pkt) - ipLen), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: src, DstAddr: dst})
	}
	t := header.TCP(pkt[ipLen:])
	t.Encode(&header.TCPFields{SrcPort: 80, DstPort: 40000, SeqNum: 1000, AckNum: 5, DataOffset: tcpLen, Flags: flags, WindowSize: 512})
	copy(pkt[ipLen+tcpLen:], payload)
	t.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(pkt)-ipLen)))
	return pkt, gso
}

func TestGSOSplit(t *testing.T) {
	payload := make([]byte, 5000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name     string
		v4       bool
		payload  []byte
		mss      uint16
		wantSegs int
	}{
		{"v4 split", true, payload, 1380, 4},
		{"v6 split", false, payload, 1360, 4},
		{"v4 exact multiple", true, payload[:2760], 1380, 2},
		{"v4 fits, checksum only", true, payload[:100], 1380, 1},
		{"v6 pure ack", false, nil, 1360, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt, gso := gsoPacket(tc.v4, tc.payload, header.TCPFlagAck|header.TCPFlagPsh|header.TCPFlagFin|header.TCPFlagCwr)
			gso.MSS = tc.mss
			const offset = 16
			outs := make([][]byte, 8)
			for i := range outs {
				outs[i] = make([]byte, offset+1500)
			}
			sizes := make([]int, len(outs))
			n, ok := gsoSplit(pkt, gso, outs, sizes, offset)
			if !ok || n != tc.wantSegs {
				t.Fatalf("gsoSplit: got %d, %v; want %d, true", n, ok, tc.wantSegs)
			}
			var got []byte
			wantSeq := uint32(1000)
			for i := range n {
				out := outs[i][offset : offset+sizes[i]]
				var net header.Network
				var tcpBytes []byte
				if tc.v4 {
					ip := header.IPv4(out)
					if !ip.IsValid(len(out)) || !ip.IsChecksumValid() {
						t.Fatalf("segment %d: invalid IPv4 header", i)
					}
					if got, want := ip.ID(), uint16(7+i); got != want {
						t.Errorf("segment %d: got IPv4 ID %d, want %d", i, got, want)
					}
					net, tcpBytes = ip, ip.Payload()
				} else {
					ip := header.IPv6(out)
					if !ip.IsValid(len(out)) {
						t.Fatalf("segment %d: invalid IPv6 header", i)
					}
					net, tcpBytes = ip, ip.Payload()
				}
				tcp := header.TCP(tcpBytes)
				data := tcpBytes[tcp.DataOffset():]
				if int(tc.mss) < len(data) {
					t.Errorf("segment %d: got %d payload bytes, want at most %d", i, len(data), tc.mss)
				}
				if !tcp.IsChecksumValid(net.SourceAddress(), net.DestinationAddress(), checksum.Checksum(data, 0), uint16(len(data))) {
					t.Errorf("segment %d: bad TCP checksum", i)
				}
				if got := tcp.SequenceNumber(); got != wantSeq {
					t.Errorf("segment %d: got seq %d, want %d", i, got, wantSeq)
				}
				wantSeq += uint32(len(data))
				last, first := i == n-1, i == 0
				f := tcp.Flags()
				if got := f&(header.TCPFlagFin|header.TCPFlagPsh) != 0; got != last {
					t.Errorf("segment %d: got FIN/PSH %v, want %v", i, got, last)
				}
				if got := f&header.TCPFlagCwr != 0; got != first {
					t.Errorf("segment %d: got CWR %v, want %v", i, got, first)
				}
				got = append(got, data...)
			}
			if !bytes.Equal(got, tc.payload) {
				t.Errorf("reassembled payload differs: got %d bytes, want %d", len(got), len(tc.payload))
			}
		})
	}
	t.Run("too few buffers", func(t *testing.T) {
		pkt, gso := gsoPacket(true, payload, header.TCPFlagAck)
		gso.MSS = 1380
		outs := [][]byte{make([]byte, 1500), make([]byte, 1500)}
		if n, ok := gsoSplit(pkt, gso, outs, make([]int, 2), 0); ok {
			t.Errorf("gsoSplit into 2 buffers: got %d, true; want false", n)
		}
	})
}
