package netstack

import (
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ackHoldDelay is the longest a pure ACK waits for a packet of its flow to
// carry it instead. A reply through the gateway usually comes well within
// it; a peer's TCP needs no ACK that soon (its loss probes wait ≥ 10 ms).
const ackHoldDelay = 500 * time.Microsecond

// ackHold is a short delayed ACK at the link. gVisor's TCP sends a pure ACK
// at the end of every batch of segments it receives, at once: for a
// request/response flow that is a second packet per round trip, sealed,
// sent, received, opened and written on both sides of the tunnel just
// before the reply that would have carried the same ACK. ackHold keeps a
// flow's pure ACK back for up to ackHoldDelay:
//   - a later packet of the flow that acknowledges at least as much (the
//     reply, or the next ACK) supersedes it, and the held one is dropped;
//     a second pure ACK is sent at once, so a bulk flow's ACKs are thinned
//     to every other one and none waits longer than the gap to the next;
//   - a packet that does not (a duplicate ACK, a window update, a RST)
//     goes after the held one, both in order, so loss recovery sees every
//     duplicate ACK;
//   - otherwise the ACK is sent when its time is up.
type ackHold struct {
	delay   time.Duration
	release func(*stack.PacketBuffer) tcpip.Error // queues a packet for the TUN side

	count atomic.Int32 // held ACKs; read without mu for every data packet

	carried, timedOut atomic.Uint64 // held ACKs superseded by a later packet, sent when their time was up

	mu     sync.Mutex
	held   map[ackKey]heldAck
	fifo   []ackDeadline // hold order, which is deadline order; stale entries skipped
	head   int
	gen    uint64
	timer  *time.Timer
	armed  bool
	closed bool
}

// ackKey names one direction of a TCP flow.
type ackKey struct {
	src, dst     tcpip.Address
	sport, dport uint16
}

type heldAck struct {
	pkt *stack.PacketBuffer
	ack seqnum.Value
	gen uint64
}

type ackDeadline struct {
	key ackKey
	gen uint64
	at  time.Time
}

// newAckHold returns an ackHold releasing through release, or nil when
// BRIDGETUN_ACK_HOLD=0 (a benchmark knob for measuring the difference).
func newAckHold(release func(*stack.PacketBuffer) tcpip.Error) *ackHold {
	if os.Getenv("BRIDGETUN_ACK_HOLD") == "0" {
		return nil
	}
	return &ackHold{delay: ackHoldDelay, release: release, held: make(map[ackKey]heldAck)}
}

// write queues pkt, or holds it if it is a pure ACK (see ackHold).
func (h *ackHold) write(pkt *stack.PacketBuffer) tcpip.Error {
	key, ack, hasAck, pure, ok := tcpInfo(pkt)
	if !ok || (!pure && h.count.Load() == 0) {
		return h.release(pkt)
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return h.release(pkt)
	}
	var flush *stack.PacketBuffer
	old, had := h.held[key]
	if had {
		delete(h.held, key)
		h.count.Add(-1)
		if hasAck && old.ack.LessThan(ack) || hasAck && !pure && old.ack == ack {
			old.pkt.DecRef() // superseded: pkt acknowledges at least as much
			h.carried.Add(1)
		} else {
			flush = old.pkt
		}
	}
	hold := pure && !had
	if had && !hold && len(h.held) == 0 && h.armed {
		// Nothing left to time: a request/response flow's ACKs are all
		// carried by replies, and its timer need not wake for nothing.
		h.timer.Stop()
		h.armed = false
		clear(h.fifo)
		h.fifo, h.head = h.fifo[:0], 0
	}
	if hold {
		pkt.IncRef()
		h.gen++
		h.held[key] = heldAck{pkt: pkt, ack: ack, gen: h.gen}
		h.count.Add(1)
		h.fifo = append(h.fifo, ackDeadline{key: key, gen: h.gen, at: time.Now().Add(h.delay)})
		h.arm(h.delay)
	}
	h.mu.Unlock()
	if flush != nil {
		_ = h.release(flush) // a failure is counted by release; pkt still goes
		flush.DecRef()
	}
	if hold {
		return nil
	}
	return h.release(pkt)
}

// arm starts the timer for d unless it is running; mu is held.
func (h *ackHold) arm(d time.Duration) {
	if h.armed {
		return
	}
	h.armed = true
	if h.timer == nil {
		h.timer = time.AfterFunc(d, h.expire)
		return
	}
	h.timer.Reset(d)
}

// expire sends the ACKs whose time is up, in the order they were held.
func (h *ackHold) expire() {
	var due []*stack.PacketBuffer
	h.mu.Lock()
	h.armed = false
	now := time.Now()
	for h.head < len(h.fifo) {
		d := h.fifo[h.head]
		if d.at.After(now) {
			h.arm(d.at.Sub(now))
			break
		}
		h.fifo[h.head] = ackDeadline{}
		h.head++
		if a, ok := h.held[d.key]; ok && a.gen == d.gen {
			delete(h.held, d.key)
			h.count.Add(-1)
			due = append(due, a.pkt)
			h.timedOut.Add(1)
		}
	}
	if h.head == len(h.fifo) {
		h.fifo, h.head = h.fifo[:0], 0
	} else if h.head > len(h.fifo)/2 {
		n := copy(h.fifo, h.fifo[h.head:])
		clear(h.fifo[n:])
		h.fifo, h.head = h.fifo[:n], 0
	}
	h.mu.Unlock()
	for _, pkt := range due {
		_ = h.release(pkt)
		pkt.DecRef()
	}
}

// close drops what is held and stops the timer; later writes pass through.
func (h *ackHold) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	if h.timer != nil {
		h.timer.Stop()
	}
	for k, a := range h.held {
		a.pkt.DecRef()
		delete(h.held, k)
	}
	h.count.Store(0)
	h.fifo, h.head = nil, 0
}

// tcpInfo reads an outbound packet's flow, acknowledgment number, whether
// it carries an ACK and whether it is a pure ACK (ACK flag only, no
// payload); ok is false for anything but TCP.
func tcpInfo(pkt *stack.PacketBuffer) (key ackKey, ack seqnum.Value, hasAck, pure, ok bool) {
	if pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return key, 0, false, false, false
	}
	th := header.TCP(pkt.TransportHeader().Slice())
	if len(th) < header.TCPMinimumSize {
		return key, 0, false, false, false
	}
	var src, dst tcpip.Address
	switch pkt.NetworkProtocolNumber {
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(pkt.NetworkHeader().Slice())
		if len(ip) < header.IPv4MinimumSize {
			return key, 0, false, false, false
		}
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(pkt.NetworkHeader().Slice())
		if len(ip) < header.IPv6MinimumSize {
			return key, 0, false, false, false
		}
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	default:
		return key, 0, false, false, false
	}
	key = ackKey{src: src, dst: dst, sport: th.SourcePort(), dport: th.DestinationPort()}
	flags := th.Flags()
	hasAck = flags.Contains(header.TCPFlagAck)
	pure = flags == header.TCPFlagAck && pkt.Data().Size() == 0 // gVisor marks every TCP packet for GSO; an empty one is never split
	return key, seqnum.Value(th.AckNumber()), hasAck, pure, true
}
