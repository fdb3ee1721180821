package netstack

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// outPacket builds an outbound IPv4 TCP packet as gVisor hands it to the
// link: headers pushed, protocol numbers set.
func outPacket(t *testing.T, sport uint16, flags header.TCPFlags, ack uint32, payload int) *stack.PacketBuffer {
	t.Helper()
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv4MinimumSize + header.TCPMinimumSize,
		Payload:            buffer.MakeWithData(make([]byte, payload)),
	})
	th := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize))
	th.Encode(&header.TCPFields{SrcPort: sport, DstPort: 40000, SeqNum: 1, AckNum: ack, DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 512})
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(pkt.Size()), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 96, 0, 10}), DstAddr: tcpip.AddrFrom4([4]byte{100, 64, 0, 2}),
	})
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	// As gVisor does for every TCP packet on a GSO-capable link, empty or not.
	pkt.GSOOptions = stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, L3HdrLen: header.IPv4MinimumSize, MSS: 1380}
	t.Cleanup(pkt.DecRef)
	return pkt
}

// recorder is an ackHold's release that keeps what it was given.
type recorder struct {
	mu   sync.Mutex
	pkts []*stack.PacketBuffer
}

func (r *recorder) release(pkt *stack.PacketBuffer) tcpip.Error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pkts = append(r.pkts, pkt)
	return nil
}

func (r *recorder) got() []*stack.PacketBuffer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*stack.PacketBuffer(nil), r.pkts...)
}

// newTestAckHold is an ackHold whose own timer never fires within a test
// (expireAt stands in for it), releasing into a recorder.
func newTestAckHold(t *testing.T) (*ackHold, *recorder) {
	r := &recorder{}
	h := &ackHold{delay: time.Hour, release: r.release, held: make(map[ackKey]heldAck)}
	t.Cleanup(h.close)
	return h, r
}

// expireAt runs the timer's work as if the clock read now+by.
func (h *ackHold) expireAt(by time.Duration) {
	h.mu.Lock()
	for i := h.head; i < len(h.fifo); i++ {
		h.fifo[i].at = h.fifo[i].at.Add(-by)
	}
	h.mu.Unlock()
	h.expire()
}

func wantReleased(t *testing.T, r *recorder, want ...*stack.PacketBuffer) {
	t.Helper()
	got := r.got()
	if len(got) != len(want) {
		t.Fatalf("released %d packets, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("released packet %d is not the one expected (order or identity)", i)
		}
	}
}

func TestAckHold(t *testing.T) {
	t.Run("a reply carries the held ACK", func(t *testing.T) {
		h, r := newTestAckHold(t)
		ack := outPacket(t, 80, header.TCPFlagAck, 100, 0)
		reply := outPacket(t, 80, header.TCPFlagAck|header.TCPFlagPsh, 100, 64)
		h.write(ack)
		wantReleased(t, r)
		h.write(reply)
		h.expireAt(2 * time.Hour)
		wantReleased(t, r, reply)
	})
	t.Run("a lone ACK goes when its time is up", func(t *testing.T) {
		h, r := newTestAckHold(t)
		ack := outPacket(t, 80, header.TCPFlagAck, 100, 0)
		h.write(ack)
		h.expireAt(time.Hour / 2)
		wantReleased(t, r)
		h.expireAt(time.Hour)
		wantReleased(t, r, ack)
	})
	t.Run("a second ACK goes at once and drops the first", func(t *testing.T) {
		h, r := newTestAckHold(t)
		first := outPacket(t, 80, header.TCPFlagAck, 100, 0)
		second := outPacket(t, 80, header.TCPFlagAck, 2000, 0)
		third := outPacket(t, 80, header.TCPFlagAck, 4000, 0)
		h.write(first)
		h.write(second)
		wantReleased(t, r, second)
		h.write(third) // held again: every other ACK of a bulk flow
		wantReleased(t, r, second)
		h.expireAt(2 * time.Hour)
		wantReleased(t, r, second, third)
	})
	t.Run("a duplicate ACK goes after the held one", func(t *testing.T) {
		h, r := newTestAckHold(t)
		first := outPacket(t, 80, header.TCPFlagAck, 100, 0)
		dup := outPacket(t, 80, header.TCPFlagAck, 100, 0)
		h.write(first)
		h.write(dup)
		wantReleased(t, r, first, dup)
	})
	t.Run("a RST goes after the held ACK", func(t *testing.T) {
		h, r := newTestAckHold(t)
		ack := outPacket(t, 80, header.TCPFlagAck, 100, 0)
		rst := outPacket(t, 80, header.TCPFlagRst, 0, 0)
		h.write(ack)
		h.write(rst)
		wantReleased(t, r, ack, rst)
	})
	t.Run("flows are held apart", func(t *testing.T) {
		h, r := newTestAckHold(t)
		a := outPacket(t, 80, header.TCPFlagAck, 100, 0)
		otherReply := outPacket(t, 81, header.TCPFlagAck|header.TCPFlagPsh, 500, 10)
		h.write(a)
		h.write(otherReply)
		wantReleased(t, r, otherReply)
		h.expireAt(2 * time.Hour)
		wantReleased(t, r, otherReply, a)
	})
	t.Run("SYN, FIN and data are never held", func(t *testing.T) {
		h, r := newTestAckHold(t)
		synAck := outPacket(t, 80, header.TCPFlagSyn|header.TCPFlagAck, 1, 0)
		fin := outPacket(t, 82, header.TCPFlagFin|header.TCPFlagAck, 1, 0)
		data := outPacket(t, 83, header.TCPFlagAck, 1, 100)
		h.write(synAck)
		h.write(fin)
		h.write(data)
		wantReleased(t, r, synAck, fin, data)
	})
	t.Run("the real timer sends a held ACK", func(t *testing.T) {
		r := &recorder{}
		done := make(chan struct{})
		h := &ackHold{delay: time.Millisecond, held: make(map[ackKey]heldAck), release: func(pkt *stack.PacketBuffer) tcpip.Error {
			r.release(pkt)
			close(done)
			return nil
		}}
		t.Cleanup(h.close)
		ack := outPacket(t, 80, header.TCPFlagAck, 100, 0)
		h.write(ack)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("held ACK not sent by the timer")
		}
		wantReleased(t, r, ack)
	})
}

// TestAckHoldThroughPair runs request/response round trips through a real
// client and gateway stack: on both sides, gVisor's pure ACK of each
// request or reply must be carried by the packet that answers it instead
// of being sent on its own.
func TestAckHoldThroughPair(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c) // echo
	}()
	p := newTestPair(t, GatewayConfig{})
	if p.gw.ep.acks == nil || p.client.ep.acks == nil {
		t.Fatal("ack hold is off (BRIDGETUN_ACK_HOLD=0 set?)")
	}
	p.dialer.route("192.0.2.10:80", ln.Addr().String())
	c, err := p.client.DialContext(t.Context(), "tcp", "192.0.2.10:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const rounds = 200
	buf := make([]byte, 64)
	for i := 0; i < rounds; i++ {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	for side, h := range map[string]*ackHold{"gateway": p.gw.ep.acks, "client": p.client.ep.acks} {
		if got := h.carried.Load(); got < rounds*9/10 {
			t.Errorf("%s: %d of %d round trips' ACKs carried by the answer (%d sent on their own when their time was up), want ≥ 90%%", side, got, rounds, h.timedOut.Load())
		}
	}
}
