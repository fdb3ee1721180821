package tunnel

import (
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// inboundLimit bounds the data packets wireguard-go holds between receiving
// them and writing them to the TUN. Each one sits in a 64 KiB buffer
// whatever its size, and wireguard-go's queues never drop, so when writing
// to the TUN is the slower side, a bulk download's whole inner TCP window
// piles up inside the process (bench-scale: a TUN client downloading held
// ~1,600 buffers, 100 MiB of heap). With a limit, receiving waits while
// the limit is reached, and the kernel's socket buffer holds or drops the
// excess, as a NIC's ring would, so the inner TCP sees the bottleneck.
//
// Packets that never reach the TUN (replays, decryption failures) would
// leave held too high for good; a wait in which the TUN took nothing for
// staleAfter starts the count again from zero.
type inboundLimit struct {
	max        int
	staleAfter time.Duration

	mu      sync.Mutex
	held    int
	writes  uint64        // TUN write calls, to tell a stale count from a busy TUN
	waiters int           // receivers in wait
	changed chan struct{} // closed and replaced when held falls below max with waiters
}

func newInboundLimit(max int) *inboundLimit {
	return &inboundLimit{max: max, staleAfter: 50 * time.Millisecond, changed: make(chan struct{})}
}

// wait returns once fewer than max packets are held, false if done closed
// first.
func (l *inboundLimit) wait(done <-chan struct{}) bool {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		l.mu.Lock()
		if l.held < l.max {
			l.mu.Unlock()
			return true
		}
		writes, changed := l.writes, l.changed
		l.waiters++
		l.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(l.staleAfter)
		} else {
			timer.Reset(l.staleAfter)
		}
		var stale, closed bool
		select {
		case <-changed:
		case <-done:
			closed = true
		case <-timer.C:
			stale = true
		}
		l.mu.Lock()
		l.waiters--
		if stale && l.writes == writes {
			l.held = 0 // nothing went to the TUN: the count is stale
		}
		l.mu.Unlock()
		if closed {
			return false
		}
	}
}

// received counts n data packets handed to wireguard-go.
func (l *inboundLimit) received(n int) {
	if n == 0 {
		return
	}
	l.mu.Lock()
	l.held += n
	l.mu.Unlock()
}

// written counts n packets written to the TUN and wakes waiting receivers.
func (l *inboundLimit) written(n int) {
	l.mu.Lock()
	l.writes++
	l.held = max(0, l.held-n)
	if l.waiters > 0 && l.held < l.max {
		close(l.changed)
		l.changed = make(chan struct{})
	}
	l.mu.Unlock()
}

// limitedTUN counts what wireguard-go writes to the TUN for an inboundLimit.
type limitedTUN struct {
	tun.Device
	limit *inboundLimit
}

func (t limitedTUN) Write(bufs [][]byte, offset int) (int, error) {
	n, err := t.Device.Write(bufs, offset)
	t.limit.written(len(bufs)) // written or dropped: either way no longer held
	return n, err
}

// isData says whether a valid WireGuard message carries a packet for the
// TUN (a transport message longer than a keepalive).
func isData(b []byte) bool {
	return len(b) > msgTransportMinSize && b[0] == msgTransport
}
