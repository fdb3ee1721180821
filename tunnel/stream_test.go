package tunnel

import (
	"bufio"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.zx2c4.com/wireguard/conn"
)

// TestStreamBindDownAndReopen drives StreamBind the way wireguard-go does
// on BindUpdate: Open, Close (receive must return net.ErrClosed), Open
// again, while the dialer cannot connect.
func TestStreamBindDownAndReopen(t *testing.T) {
	checkGoroutines(t)
	reg := prometheus.NewRegistry()
	dials := make(chan struct{}, 100)
	b := NewStreamBind(StreamBindConfig{
		Dial: func(ctx context.Context) (net.Conn, error) {
			dials <- struct{}{}
			return nil, errors.New("refused")
		},
		Registerer: reg, MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond,
	})
	pkt := make([]byte, 32)
	pkt[0] = msgTransport
	for round := range 2 {
		fns, _, err := b.Open(0)
		if err != nil {
			t.Fatalf("round %d: Open: %v", round, err)
		}
		if _, _, err := b.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
			t.Errorf("round %d: second Open: got %v, want ErrBindAlreadyOpen", round, err)
		}
		<-dials // the dial loop is running
		if err := b.Send([][]byte{pkt, pkt}, clientEndpoint{}); err != nil {
			t.Errorf("round %d: Send while down: got %v, want nil", round, err)
		}
		recvErr := make(chan error, 1)
		go func() {
			bufs, sizes, eps := [][]byte{make([]byte, 100)}, make([]int, 1), make([]conn.Endpoint, 1)
			_, err := fns[0](bufs, sizes, eps)
			recvErr <- err
		}()
		if err := b.Close(); err != nil {
			t.Fatalf("round %d: Close: %v", round, err)
		}
		if err := <-recvErr; !errors.Is(err, net.ErrClosed) {
			t.Errorf("round %d: receive after Close: got %v, want net.ErrClosed", round, err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("round %d: second Close: got %v, want nil", round, err)
		}
	}
	m := mustMetrics(reg) // same registry: returns the bind's counters
	if got := testutil.ToFloat64(m.dropped.WithLabelValues(dropStreamDown)); got != 4 {
		t.Errorf("stream_down drops: got %v, want 4", got)
	}
	if got := testutil.ToFloat64(m.reconnects); got != 0 {
		t.Errorf("reconnects with no connection ever made: got %v, want 0", got)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n == 0 {
		t.Errorf("gather: got %d metrics, %v; want some, no error", n, err)
	}
}

// TestStreamBindRedial: Redial drops the live stream (its far end sees it
// close) and the bind dials again at once; frames go over the new stream.
// Real loopback TCP connections stand in for port-forwards.
func TestStreamBindRedial(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	b := NewStreamBind(StreamBindConfig{
		Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		},
		MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond,
	})
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	first := <-accepted
	defer first.Close()
	inUse := func() bool {
		b.mu.Lock()
		s := b.slots[0]
		b.mu.Unlock()
		return s.current() != nil
	}
	testkit.WaitFor(t, 10*time.Second, "the first stream in use", inUse)
	b.Redial("the pod was replaced")
	// The old stream ends for its far end...
	if err := first.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var ne net.Error
	if _, err := first.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("old stream: read got %v, want it closed by Redial", err)
	}
	// ...and a new one is dialled, which carries what is sent next.
	var second net.Conn
	select {
	case second = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("no new stream dialled after Redial")
	}
	defer second.Close()
	pkt := make([]byte, 32)
	pkt[0] = msgTransport
	pkt[31] = 0x5a
	if err := second.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the new stream in use", inUse)
	if err := b.Send([][]byte{pkt}, clientEndpoint{}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err := ReadFrame(bufio.NewReader(second), buf)
	if err != nil || n != len(pkt) || buf[31] != 0x5a {
		t.Fatalf("frame on the new stream: got %x, %v; want %x", buf[:n], err, pkt)
	}
}

// TestStreamBindUnansweredHandshake: an initiation that the far end never
// answers (a stream that no longer reaches a live gateway) gets the stream
// dropped and dialled again; a response read back clears the mark, so a
// gateway that answers is left alone.
func TestStreamBindUnansweredHandshake(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	b := NewStreamBind(StreamBindConfig{
		Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		},
		MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond, UnansweredAfter: 100 * time.Millisecond,
	})
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	inUse := func() bool {
		b.mu.Lock()
		s := b.slots[0]
		b.mu.Unlock()
		return s.current() != nil
	}
	init := make([]byte, msgInitiationSize)
	init[0] = msgInitiation

	// Answered: the far end writes a response back; receive reads it.
	first := <-accepted
	defer first.Close()
	testkit.WaitFor(t, 10*time.Second, "the first stream in use", inUse)
	if err := b.Send([][]byte{init}, clientEndpoint{}); err != nil {
		t.Fatal(err)
	}
	if b.unansweredSince.Load() == 0 {
		t.Fatal("no unanswered mark after sending an initiation")
	}
	resp := make([]byte, msgResponseSize)
	resp[0] = msgResponse
	if err := WriteFrame(first, resp); err != nil {
		t.Fatal(err)
	}
	bufs, sizes, eps := [][]byte{make([]byte, 2048)}, make([]int, 1), make([]conn.Endpoint, 1)
	if n, err := fns[0](bufs, sizes, eps); err != nil || n != 1 || sizes[0] != msgResponseSize {
		t.Fatalf("receive the response: n %d, size %d, %v", n, sizes[0], err)
	}
	if got := b.unansweredSince.Load(); got != 0 {
		t.Fatalf("after the response: unanswered mark %d, want 0", got)
	}

	// Unanswered: the same far end stays silent; the stream is redialled.
	if err := b.Send([][]byte{init}, clientEndpoint{}); err != nil {
		t.Fatal(err)
	}
	if err := first.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var ne net.Error
	for {
		if _, err := first.Read(make([]byte, 512)); err != nil {
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the silent stream was not dropped")
			}
			break
		}
	}
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("no new stream dialled after the unanswered handshake")
	}
}
