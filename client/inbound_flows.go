package client

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"time"
)

// How long after the workstation last sent on a flow its replies are let in.
const (
	// tcpFlowTimeout is the kernel's nf_conntrack_tcp_timeout_established: a
	// connection that survives a stateful Linux firewall survives this one.
	tcpFlowTimeout = 5 * 24 * time.Hour
	// tcpClosingTimeout follows a FIN or RST (conntrack's TIME_WAIT).
	tcpClosingTimeout = 2 * time.Minute
	// udpFlowTimeout is the gateway's own UDP idle timeout: after it the
	// gateway has dropped its side of the flow anyway.
	udpFlowTimeout = 60 * time.Second
	// icmpFlowTimeout is conntrack's ICMP timeout, for echo replies.
	icmpFlowTimeout = 30 * time.Second
)

// The flow table: flowSlots entries, a flow in one of flowProbe slots after
// its hash. A flow that finds them all live evicts the one that expires
// first; it comes back with the next packet the workstation sends on it.
const (
	flowSlots = 1 << 14
	flowProbe = 8
)

// IP protocol numbers, ICMP types and TCP flags the filter reads.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58

	icmpEchoReply, icmpUnreachable, icmpEchoRequest, icmpTimeExceeded, icmpParamProblem = 0, 3, 8, 11, 12
	icmp6Unreachable, icmp6TooBig, icmp6TimeExceeded, icmp6ParamProblem                 = 1, 2, 3, 4
	icmp6EchoRequest, icmp6EchoReply                                                    = 128, 129

	tcpFIN, tcpSYN, tcpRST, tcpACK = 0x01, 0x02, 0x04, 0x10
)

// flowKey names a flow from the workstation's side. For ICMP echo, rport is
// 0 and lport the echo identifier.
type flowKey struct {
	remote       [16]byte // the peer's address; IPv4 in the first 4 bytes
	rport, lport uint16
	proto        uint8
	v6           bool
}

type flowEntry struct {
	key     flowKey
	expires int64 // monotonic nanoseconds; not after now = free
	closing bool  // a FIN or RST was seen: tcpClosingTimeout applies
}

// flowTable holds the flows the workstation opened. Its methods are called
// with mu held (once per batch by the filter).
type flowTable struct {
	mu    sync.Mutex
	seed  uint64
	slots []flowEntry // flowSlots of them
}

func newFlowTable() flowTable {
	return flowTable{seed: rand.Uint64(), slots: make([]flowEntry, flowSlots)}
}

// find returns k's live entry, or nil.
func (t *flowTable) find(k flowKey, now int64) *flowEntry {
	i := t.index(k)
	for j := range flowProbe {
		e := &t.slots[(i+j)&(flowSlots-1)]
		if e.expires > now && e.key == k {
			return e
		}
	}
	return nil
}

// claim returns k's live entry, or a fresh one for k (its expiry for the
// caller to set) in a free slot or the one that expires first.
func (t *flowTable) claim(k flowKey, now int64) *flowEntry {
	i := t.index(k)
	var victim *flowEntry
	for j := range flowProbe {
		e := &t.slots[(i+j)&(flowSlots-1)]
		if e.expires > now && e.key == k {
			return e
		}
		if victim == nil || e.expires < victim.expires {
			victim = e
		}
	}
	*victim = flowEntry{key: k}
	return victim
}

func (t *flowTable) index(k flowKey) int {
	h := mix64(t.seed ^ binary.LittleEndian.Uint64(k.remote[0:8]))
	h = mix64(h ^ binary.LittleEndian.Uint64(k.remote[8:16]))
	v6 := uint64(0)
	if k.v6 {
		v6 = 1
	}
	h = mix64(h ^ (uint64(k.rport)<<32 | uint64(k.lport)<<16 | uint64(k.proto)<<8 | v6))
	return int(h & (flowSlots - 1))
}

// mix64 is MurmurHash3's 64-bit finaliser.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// noteOutbound records the flow of pkt, a packet the workstation sends into
// the tunnel. Called with f.flows.mu held.
func (f *inboundFilter) noteOutbound(pkt []byte, now int64) {
	var p ipPacket
	if !parseIP(pkt, &p) || p.later || !f.local.is(p.src) {
		return
	}
	k := flowKey{proto: p.proto, v6: len(p.dst) == 16}
	copy(k.remote[:], p.dst)
	l4 := p.l4
	ttl := udpFlowTimeout
	switch {
	case p.proto == protoTCP:
		if len(l4) < 14 {
			return
		}
		k.lport, k.rport = be16(l4[0:]), be16(l4[2:])
		flags := l4[13]
		if flags&tcpRST != 0 {
			if e := f.flows.find(k, now); e != nil {
				e.expires = now // the connection is gone
			}
			return
		}
		e := f.flows.claim(k, now)
		if flags&(tcpSYN|tcpACK) == tcpSYN {
			e.closing = false // a new connection, perhaps on a tuple used before
		}
		if flags&tcpFIN != 0 {
			e.closing = true
		}
		ttl = tcpFlowTimeout
		if e.closing {
			ttl = tcpClosingTimeout
		}
		e.expires = now + int64(ttl)
		return
	case p.proto == protoUDP:
		if len(l4) < 8 {
			return
		}
		k.lport, k.rport = be16(l4[0:]), be16(l4[2:])
	case p.proto == protoICMP && !k.v6 && len(l4) >= 8 && l4[0] == icmpEchoRequest,
		p.proto == protoICMPv6 && k.v6 && len(l4) >= 8 && l4[0] == icmp6EchoRequest:
		k.lport, ttl = be16(l4[4:]), icmpFlowTimeout
	default:
		return
	}
	f.flows.claim(k, now).expires = now + int64(ttl)
}

// checkInbound decides on pkt, a packet from the tunnel: pass, or the drop
// verdict to count it under. Called with f.flows.mu held.
func (f *inboundFilter) checkInbound(pkt []byte, now int64) int {
	var p ipPacket
	if !parseIP(pkt, &p) {
		return dropOther
	}
	if !f.local.is(p.dst) {
		return dropVerdict(p.proto)
	}
	if p.later {
		return pass // useless without its first fragment, which is checked
	}
	k := flowKey{proto: p.proto, v6: len(p.src) == 16}
	copy(k.remote[:], p.src)
	l4 := p.l4
	switch {
	case p.proto == protoTCP:
		if len(l4) < 4 {
			return dropTCP
		}
		k.rport, k.lport = be16(l4[0:]), be16(l4[2:])
		if f.ports.open(k.lport) {
			return pass
		}
		e := f.flows.find(k, now)
		if e == nil {
			return dropTCP
		}
		if len(l4) >= 14 && l4[13]&(tcpFIN|tcpRST) != 0 && !e.closing {
			e.closing, e.expires = true, now+int64(tcpClosingTimeout)
		}
		return pass
	case p.proto == protoUDP:
		if len(l4) < 4 {
			return dropUDP
		}
		k.rport, k.lport = be16(l4[0:]), be16(l4[2:])
		if f.flows.find(k, now) == nil {
			return dropUDP
		}
		return pass
	case p.proto == protoICMP && !k.v6:
		if len(l4) < 8 {
			return dropICMP
		}
		switch l4[0] {
		case icmpEchoReply:
			k.lport = be16(l4[4:])
			if f.flows.find(k, now) != nil {
				return pass
			}
		case icmpUnreachable, icmpTimeExceeded, icmpParamProblem:
			return f.checkICMPError(l4[8:], false, now)
		}
		return dropICMP
	case p.proto == protoICMPv6 && k.v6:
		if len(l4) < 8 {
			return dropICMP
		}
		switch l4[0] {
		case icmp6EchoReply:
			k.lport = be16(l4[4:])
			if f.flows.find(k, now) != nil {
				return pass
			}
		case icmp6Unreachable, icmp6TooBig, icmp6TimeExceeded, icmp6ParamProblem:
			return f.checkICMPError(l4[8:], true, now)
		}
		return dropICMP
	}
	return dropVerdict(p.proto)
}

// checkICMPError passes an ICMP error whose quoted packet (inner, usually
// cut short) is one the workstation sent on a flow it holds.
func (f *inboundFilter) checkICMPError(inner []byte, v6 bool, now int64) int {
	var q ipPacket
	if !parseIP(inner, &q) || q.later || (len(q.src) == 16) != v6 || !f.local.is(q.src) {
		return dropICMP
	}
	k := flowKey{proto: q.proto, v6: v6}
	copy(k.remote[:], q.dst)
	l4 := q.l4
	switch {
	case q.proto == protoTCP || q.proto == protoUDP:
		if len(l4) < 4 {
			return dropICMP
		}
		k.lport, k.rport = be16(l4[0:]), be16(l4[2:])
	case q.proto == protoICMP && !v6 && len(l4) >= 8 && l4[0] == icmpEchoRequest,
		q.proto == protoICMPv6 && v6 && len(l4) >= 8 && l4[0] == icmp6EchoRequest:
		k.lport = be16(l4[4:])
	default:
		return dropICMP
	}
	if f.flows.find(k, now) == nil {
		return dropICMP
	}
	return pass
}

func dropVerdict(proto uint8) int {
	switch proto {
	case protoTCP:
		return dropTCP
	case protoUDP:
		return dropUDP
	case protoICMP, protoICMPv6:
		return dropICMP
	}
	return dropOther
}

// ipPacket is what the filter reads of an IP packet; its slices point into it.
type ipPacket struct {
	proto    uint8
	src, dst []byte // 4 or 16 bytes
	l4       []byte // the transport header on (unless later)
	later    bool   // a fragment other than the first: l4 is not a header
}

// parseIP reads an IPv4 or IPv6 header (IPv6 extension headers walked). A
// packet longer than its length field is cut to it; a shorter one is read
// as far as it goes (the quoted packet in an ICMP error). false: malformed.
func parseIP(b []byte, p *ipPacket) bool {
	if len(b) == 0 {
		return false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return false
		}
		ihl, total := int(b[0]&0x0f)*4, int(be16(b[2:]))
		if ihl < 20 || total < ihl || len(b) < ihl {
			return false
		}
		if total < len(b) {
			b = b[:total]
		}
		p.proto, p.src, p.dst, p.l4 = b[9], b[12:16], b[16:20], b[ihl:]
		p.later = be16(b[6:])&0x1fff != 0
		return true
	case 6:
		if len(b) < 40 {
			return false
		}
		if total := 40 + int(be16(b[4:])); total < len(b) {
			b = b[:total]
		}
		p.src, p.dst = b[8:24], b[24:40]
		next, rest := b[6], b[40:]
		for range 8 {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(rest) < 8 || len(rest) < (int(rest[1])+1)*8 {
					return false
				}
				next, rest = rest[0], rest[(int(rest[1])+1)*8:]
			case 44: // fragment
				if len(rest) < 8 {
					return false
				}
				if be16(rest[2:])&^7 != 0 {
					p.later = true
				}
				next, rest = rest[0], rest[8:]
			default:
				p.proto, p.l4 = next, rest
				return true
			}
		}
	}
	return false
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
