package sidecar

import (
	"sync"
	"time"
)

// breaker remembers which relay targets just failed, so that a workstation
// that is gone (killed, asleep, its gateway deleted) costs one dial timeout
// per cool-off instead of one per connection: while a target is cooling
// off, or while one trial dial to it is in flight, callers skip it and pass
// their connection through at once.
type breaker struct {
	coolOff time.Duration
	now     func() time.Time // time.Now; replaced in tests

	mu    sync.Mutex
	state map[string]*targetState
}

type targetState struct {
	failedAt time.Time
	trial    bool // a dial after the cool-off is in flight
}

func newBreaker(coolOff time.Duration) *breaker {
	return &breaker{coolOff: coolOff, now: time.Now, state: map[string]*targetState{}}
}

// allow reports whether target may be dialled now. A caller allowed after
// a failure is the trial; it must report its outcome with done.
func (b *breaker) allow(target string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.state[target]
	if st == nil {
		return true
	}
	if st.trial || b.now().Sub(st.failedAt) < b.coolOff {
		return false
	}
	st.trial = true
	return true
}

// done records a dial's outcome: success forgets the target's failures.
func (b *breaker) done(target string, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ok {
		delete(b.state, target)
		return
	}
	b.state[target] = &targetState{failedAt: b.now()}
}
