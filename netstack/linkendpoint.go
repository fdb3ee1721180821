package netstack

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

const (
	// defaultMTU leaves room for WireGuard's 80 bytes of overhead on a 1500-byte underlay.
	defaultMTU = 1420
	// linkBatchSize is what wireguard-go sees as BatchSize(): it sizes the
	// slices it hands to Read/Write, and with many packets per call its UDP
	// GSO can coalesce (PERF-NOTES lever 1; BatchSize 1 made download 3.5x slower).
	linkBatchSize = 128
	// linkQueueLen bounds packets gVisor has produced but wireguard-go has not read yet.
	linkQueueLen = 1024
	// linkQueueWait is how long gVisor's writer blocks on a full queue before the
	// packet is dropped. Blocking is the backpressure; the bound only exists to
	// break a cycle where both directions of an in-process pump are full.
	linkQueueWait = 250 * time.Millisecond
	// nicID is the only NIC each stack has.
	nicID tcpip.NICID = 1
)

// linkEndpoint sits between gVisor (it is a stack.LinkEndpoint) and wireguard-go
// (it is a tun.Device). Outbound packets wait in a bounded queue and gVisor's
// writer blocks while it is full, so bursts slow the sender down rather than
// being dropped and retransmitted. Reads move as many queued packets as fit in
// one call.
type linkEndpoint struct {
	mtu      uint32
	outbound chan *stack.PacketBuffer
	events   chan tun.Event
	closed   chan struct{}
	once     sync.Once

	// intercept, when set, sees every inbound packet before gVisor does and
	// returns true if it consumed it (the gateway's ICMP echo handling).
	intercept func(pkt []byte) bool

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher

	dropped atomic.Uint64 // outbound packets dropped (queue full past linkQueueWait, or too big)

	readMu  sync.Mutex          // held by Read
	pending *stack.PacketBuffer // taken from outbound but left for the next Read; guarded by readMu
	scratch []byte              // a GSO segment being split; guarded by readMu
}

var (
	_ stack.LinkEndpoint = (*linkEndpoint)(nil)
	_ stack.GSOEndpoint  = (*linkEndpoint)(nil)
	_ tun.Device         = tunDevice{}
)

func newLinkEndpoint(mtu int) *linkEndpoint {
	e := &linkEndpoint{
		mtu:      uint32(mtu),
		outbound: make(chan *stack.PacketBuffer, linkQueueLen),
		events:   make(chan tun.Event, 1),
		closed:   make(chan struct{}),
	}
	e.events <- tun.EventUp
	return e
}

// ---- tun.Device (wireguard-go side) ----

// File returns nil: there is no kernel device.
func (e *linkEndpoint) File() *os.File { return nil }

// Name returns a fixed name for logs.
func (e *linkEndpoint) Name() (string, error) { return "netstack", nil }

// Events delivers EventUp once and is closed by Close.
func (e *linkEndpoint) Events() <-chan tun.Event { return e.events }

// BatchSize tells wireguard-go how many packets to exchange per call.
func (e *linkEndpoint) BatchSize() int { return linkBatchSize }

// Read blocks for the first outbound packet, then takes whatever else is
// already queued without blocking, up to len(bufs). A large TCP segment
// (GSO) becomes several packets; one that no longer fits this call waits for
// the next.
func (e *linkEndpoint) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	e.readMu.Lock()
	defer e.readMu.Unlock()
	n := 0
	for n == 0 { // n stays 0 only if every packet taken was dropped
		pkt := e.pending
		e.pending = nil
		if pkt == nil {
			select {
			case pkt = <-e.outbound:
			case <-e.closed:
				return 0, os.ErrClosed
			}
		}
		for pkt != nil {
			if n > 0 && gsoSegments(pkt) > len(bufs)-n {
				e.pending = pkt
				break
			}
			if k, ok := e.readPacket(bufs[n:], sizes[n:], offset, pkt); ok {
				n += k
			} else {
				e.dropped.Add(1)
			}
			pkt.DecRef()
			pkt = nil
			if n == len(bufs) {
				break
			}
			select {
			case pkt = <-e.outbound:
			default:
			}
		}
	}
	return n, nil
}

// readPacket copies pkt into bufs[0][offset:], or splits it across bufs if
// gVisor built it under GSO options; false if it does not fit.
func (e *linkEndpoint) readPacket(bufs [][]byte, sizes []int, offset int, pkt *stack.PacketBuffer) (int, bool) {
	if pkt.GSOOptions.Type == stack.GSONone {
		size, ok := copyPacket(bufs[0][offset:], pkt)
		sizes[0] = size
		return 1, ok
	}
	if cap(e.scratch) < pkt.Size() {
		e.scratch = make([]byte, max(pkt.Size(), gsoMaxSize))
	}
	size, _ := copyPacket(e.scratch[:cap(e.scratch)], pkt)
	return gsoSplit(e.scratch[:size], pkt.GSOOptions, bufs, sizes, offset)
}

// copyPacket copies the packet's bytes into dst; false if dst is too small.
func copyPacket(dst []byte, pkt *stack.PacketBuffer) (int, bool) {
	if pkt.Size() > len(dst) {
		return 0, false
	}
	n := 0
	for _, s := range pkt.AsSlices() {
		n += copy(dst[n:], s)
	}
	return n, true
}

// Write hands packets from wireguard-go to gVisor. It copies each packet, so
// the caller may reuse bufs when Write returns. TCP segments of one flow that
// arrive in the same batch are coalesced (GRO, PERF-NOTES lever 2): gVisor
// runs its per-segment TCP work once per run of segments instead of once
// per packet, and sends one ACK for it. The coalescer is flushed before
// Write returns, so nothing is held back and no timer is involved. (GRO was
// once removed for a ~26 s stall after a stream cut; that stall was gVisor's
// RTO backoff while the stream bind dropped every retransmission during its
// redial, with or without GRO: in a download the gateway receives only pure
// ACKs, which GRO passes through at once.)
func (e *linkEndpoint) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-e.closed:
		return 0, os.ErrClosed
	default:
	}
	e.mu.RLock()
	d := e.dispatcher
	e.mu.RUnlock()
	var g *gro.GRO // taken on the first packet for gVisor
	for _, b := range bufs {
		pkt := b[offset:]
		if len(pkt) == 0 {
			continue
		}
		var proto tcpip.NetworkProtocolNumber
		switch pkt[0] >> 4 {
		case 4:
			proto = header.IPv4ProtocolNumber
		case 6:
			proto = header.IPv6ProtocolNumber
		default:
			continue // not IP: nothing in gVisor wants it
		}
		if e.intercept != nil && e.intercept(pkt) {
			continue
		}
		if d == nil {
			continue
		}
		if g == nil {
			g = groPool.Get().(*gro.GRO)
			g.Dispatcher = d
		}
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
		pb.NetworkProtocolNumber = proto
		// GRO would otherwise verify both checksums itself; skipping that is
		// what Capabilities declares: WireGuard authenticated the packet.
		pb.RXChecksumValidated = true
		g.Enqueue(pb)
		pb.DecRef()
	}
	if g != nil {
		g.Flush()
		g.Dispatcher = nil
		groPool.Put(g)
	}
	return len(bufs), nil
}

// groPool holds idle coalescers. A gro.GRO is not safe for concurrent use and
// wireguard-go writes from one goroutine per peer, so each Write takes its
// own; it is empty again after Flush.
var groPool = sync.Pool{New: func() any {
	g := new(gro.GRO)
	g.Init(true)
	return g
}}

// Close stops both directions; gVisor's pending writers get ErrClosedForSend
// and wireguard-go's reader gets os.ErrClosed. Idempotent.
func (e *linkEndpoint) Close() {
	e.once.Do(func() {
		close(e.closed)
		close(e.events)
		e.readMu.Lock() // Read returns once closed is closed
		if e.pending != nil {
			e.pending.DecRef()
			e.pending = nil
		}
		e.readMu.Unlock()
		for {
			select {
			case pkt := <-e.outbound:
				pkt.DecRef()
			default:
				return
			}
		}
	})
}

// tunDevice is the tun.Device view of a linkEndpoint; it exists because
// gVisor and wireguard-go both want methods named MTU and Close.
type tunDevice struct{ *linkEndpoint }

// MTU returns the configured inner MTU.
func (t tunDevice) MTU() (int, error) { return int(t.mtu), nil }

// Close stops the endpoint; the stack itself is closed by its owner.
func (t tunDevice) Close() error { t.linkEndpoint.Close(); return nil }

// injectOutbound queues a raw IP packet we built ourselves (an ICMP echo
// reply) for wireguard-go, as if gVisor had written it.
func (e *linkEndpoint) injectOutbound(b []byte) error {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	defer pkt.DecRef()
	if err := e.enqueue(pkt); err != nil {
		return fmt.Errorf("queue outbound packet of %d bytes: %s", len(b), err)
	}
	return nil
}

// enqueue takes a reference on pkt and queues it, blocking up to linkQueueWait.
func (e *linkEndpoint) enqueue(pkt *stack.PacketBuffer) tcpip.Error {
	pkt.IncRef()
	select {
	case e.outbound <- pkt:
		return nil
	case <-e.closed:
		pkt.DecRef()
		return &tcpip.ErrClosedForSend{}
	default:
	}
	t := time.NewTimer(linkQueueWait)
	defer t.Stop()
	select {
	case e.outbound <- pkt:
		return nil
	case <-e.closed:
		pkt.DecRef()
		return &tcpip.ErrClosedForSend{}
	case <-t.C:
		pkt.DecRef()
		e.dropped.Add(1)
		return &tcpip.ErrNoBufferSpace{}
	}
}

// ---- stack.LinkEndpoint (gVisor side) ----

// WritePackets queues gVisor's outbound packets, blocking while the queue is full.
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if err := e.enqueue(pkt); err != nil {
			if n == 0 {
				return 0, err
			}
			break
		}
		n++
	}
	return n, nil
}

// MTU implements stack.LinkEndpoint.
func (e *linkEndpoint) MTU() uint32 { return e.mtu }

// SetMTU is ignored: the MTU is fixed by configuration.
func (e *linkEndpoint) SetMTU(uint32) {}

// MaxHeaderLength is 0: IP packets have no link header.
func (e *linkEndpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress is empty: there is no link layer.
func (e *linkEndpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress is ignored.
func (e *linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities: RX checksum offload, because every packet reaching us was
// authenticated by WireGuard, so verifying the inner checksums again is wasted work.
func (e *linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

// SupportedGSO lets gVisor's TCP send segments of up to GSOMaxSize bytes with
// a partial checksum; Read splits them and finishes the checksums (gso.go).
func (e *linkEndpoint) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

// GSOMaxSize is the largest segment gVisor may hand WritePackets.
func (e *linkEndpoint) GSOMaxSize() uint32 { return gsoMaxSize }

// Attach records gVisor's dispatcher (nil when the NIC is removed).
func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	e.dispatcher = d
	e.mu.Unlock()
}

// IsAttached reports whether gVisor attached a dispatcher.
func (e *linkEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait returns at once: the endpoint starts no goroutines.
func (e *linkEndpoint) Wait() {}

// ARPHardwareType is none: an IP-only link.
func (e *linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader does nothing: no link header.
func (e *linkEndpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader accepts every packet: no link header.
func (e *linkEndpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// SetOnCloseAction is unused.
func (e *linkEndpoint) SetOnCloseAction(func()) {}
