package netstack

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoMaxSize is the largest TCP segment gVisor may hand the link endpoint
// (GSO, PERF-NOTES lever 2): one pass through gVisor's send path per 64 KiB
// instead of per MTU. The endpoint cuts it into MTU-sized packets in Read.
const gsoMaxSize = 1<<16 - 1

// gsoSegments is an upper bound on the packets gsoSplit makes of pkt.
func gsoSegments(pkt *stack.PacketBuffer) int {
	if pkt.GSOOptions.Type == stack.GSONone || pkt.GSOOptions.MSS == 0 {
		return 1
	}
	return pkt.Size()/int(pkt.GSOOptions.MSS) + 1
}

// gsoSplit cuts pkt, a TCP segment gVisor built under GSO options gso, into
// packets of at most gso.MSS payload bytes in outs[i][offset:], and returns
// how many it wrote. Each copy gets its own IP length (and IPv4 ID and header
// checksum), sequence number, flags (FIN and PSH only on the last, CWR only
// on the first) and a full TCP checksum: gVisor left only the pseudo-header
// sum (CHECKSUM_PARTIAL), even on segments that need no split. false if pkt
// is malformed or does not fit outs.
func gsoSplit(pkt []byte, gso stack.GSO, outs [][]byte, sizes []int, offset int) (int, bool) {
	v4 := gso.Type == stack.GSOTCPv4
	var ipLen int
	var src, dst tcpip.Address
	var id uint16
	if v4 {
		if len(pkt) < header.IPv4MinimumSize {
			return 0, false
		}
		ip := header.IPv4(pkt)
		ipLen = int(ip.HeaderLength())
		src, dst, id = ip.SourceAddress(), ip.DestinationAddress(), ip.ID()
	} else {
		if len(pkt) < header.IPv6MinimumSize {
			return 0, false
		}
		ip := header.IPv6(pkt)
		ipLen = int(gso.L3HdrLen) // gVisor's TCP adds no extension headers
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	if ipLen < header.IPv4MinimumSize || len(pkt) < ipLen+header.TCPMinimumSize {
		return 0, false
	}
	hdrLen := ipLen + int(header.TCP(pkt[ipLen:]).DataOffset())
	if hdrLen < ipLen+header.TCPMinimumSize || hdrLen > len(pkt) {
		return 0, false
	}
	tcpHdr := header.TCP(pkt[ipLen:hdrLen])
	seq, flags := tcpHdr.SequenceNumber(), tcpHdr.Flags()
	payload := pkt[hdrLen:]
	mss := int(gso.MSS)
	if mss == 0 || mss > len(payload) {
		mss = max(len(payload), 1)
	}
	segs := max((len(payload)+mss-1)/mss, 1)
	if segs > len(outs) {
		return 0, false
	}
	for i := range segs {
		start := i * mss
		end := min(start+mss, len(payload))
		out := outs[i][offset:]
		size := hdrLen + end - start
		if len(out) < size {
			return 0, false
		}
		out = out[:size]
		copy(out, pkt[:hdrLen])
		copy(out[hdrLen:], payload[start:end])
		if v4 {
			ip := header.IPv4(out)
			ip.SetTotalLength(uint16(size))
			ip.SetID(id + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		} else {
			header.IPv6(out).SetPayloadLength(uint16(size - header.IPv6MinimumSize))
		}
		t := header.TCP(out[ipLen:hdrLen])
		t.SetSequenceNumber(seq + uint32(start))
		f := flags
		if i != segs-1 {
			f &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if i != 0 {
			f &^= header.TCPFlagCwr
		}
		t.SetFlags(uint8(f))
		t.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(size-ipLen))
		xsum = checksum.Checksum(out[hdrLen:], xsum)
		t.SetChecksum(^t.CalculateChecksum(xsum))
		sizes[i] = size
	}
	return segs, true
}
