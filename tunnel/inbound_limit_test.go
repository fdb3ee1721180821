package tunnel

import (
	"encoding/binary"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// dataMsg is a WireGuard transport message with a payload of n bytes
// (n = 0: a keepalive).
func dataMsg(n int) []byte {
	b := make([]byte, msgTransportMinSize+n)
	binary.LittleEndian.PutUint32(b, msgTransport)
	return b
}

// TestInboundLimitReceive: the bind's receive counts the data packets it
// hands over (not keepalives), waits before reading while the limit is
// reached, reads again once the TUN took packets, and gives up with
// net.ErrClosed when the bind closes while it waits.
func TestInboundLimitReceive(t *testing.T) {
	const limit = 4
	reads := make(chan int, 16) // packets each inner read returns
	inner := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, ok := <-reads
		if !ok {
			return 0, net.ErrClosed
		}
		for i := range n {
			p := dataMsg(100)
			if i == 0 {
				p = dataMsg(0) // a keepalive: not counted
			}
			sizes[i] = copy(bufs[i], p)
		}
		return n, nil
	}
	mb := &metricsBind{m: mustMetrics(nil), limit: newInboundLimit(limit)}
	mb.limit.staleAfter = time.Hour // this test is not about stale counts
	closed := make(chan struct{})
	recv := mb.receive(inner, closed)
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 256)
	}
	sizes, eps := make([]int, 8), make([]conn.Endpoint, 8)

	reads <- 6 // 5 data packets and a keepalive: over the limit
	if n, err := recv(bufs, sizes, eps); n != 6 || err != nil {
		t.Fatalf("first read: %d, %v", n, err)
	}
	if got := mb.limit.held; got != 5 {
		t.Fatalf("held %d after 5 data packets and a keepalive, want 5", got)
	}
	returned := make(chan error, 1)
	go func() {
		_, err := recv(bufs, sizes, eps)
		returned <- err
	}()
	reads <- 1
	waitWaiters(t, mb.limit, 1)
	if len(reads) != 1 {
		t.Fatal("the bind was read past the limit, want the read to wait")
	}
	limitedTUN{Device: nopTUN{}, limit: mb.limit}.Write(make([][]byte, 2), 0) // held 3 < 4
	if err := <-returned; err != nil {
		t.Fatalf("read after the TUN took two: %v", err)
	}

	mb.limit.received(10) // over the limit again
	go func() {
		_, err := recv(bufs, sizes, eps)
		returned <- err
	}()
	waitWaiters(t, mb.limit, 1)
	close(closed)
	if err := <-returned; err != net.ErrClosed {
		t.Fatalf("read waiting when the bind closed: %v, want net.ErrClosed", err)
	}
}

// TestInboundLimitStale: a count that stays at the limit while the TUN
// takes nothing (packets wireguard-go dropped) starts again from zero, so
// receiving never stops for good; a TUN that keeps taking packets is not
// mistaken for that.
func TestInboundLimitStale(t *testing.T) {
	l := newInboundLimit(2)
	l.staleAfter = 10 * time.Millisecond
	l.received(5)
	start := time.Now()
	if !l.wait(make(chan struct{})) {
		t.Fatal("wait: closed, want true")
	}
	if took := time.Since(start); took < l.staleAfter {
		t.Fatalf("wait returned after %s, before the count could be stale (%s)", took, l.staleAfter)
	}
	if l.held != 0 {
		t.Fatalf("held %d after a stale wait, want 0", l.held)
	}
}

// waitWaiters returns once n receivers wait on l.
func waitWaiters(t *testing.T, l *inboundLimit, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.mu.Lock()
		w := l.waiters
		l.mu.Unlock()
		if w == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d receivers wait, want %d", w, n)
		}
		runtime.Gosched()
	}
}

// nopTUN is the part of a tun.Device limitedTUN calls.
type nopTUN struct{ tun.Device }

func (nopTUN) Write(bufs [][]byte, _ int) (int, error) { return len(bufs), nil }
