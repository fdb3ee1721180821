package sidecar

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bridgetun/bridgetun/agent/api"
)

func TestBreaker(t *testing.T) {
	b := newBreaker(time.Second)
	now := time.Unix(1000, 0)
	b.now = func() time.Time { return now }
	type step struct {
		advance   time.Duration
		op        string // "allow", "ok", "fail"
		target    string
		wantAllow bool
	}
	steps := []step{
		{op: "allow", target: "a", wantAllow: true}, // never failed
		{op: "fail", target: "a"},
		{op: "allow", target: "a", wantAllow: false}, // cooling off
		{op: "allow", target: "b", wantAllow: true},  // other targets unaffected
		{advance: 999 * time.Millisecond, op: "allow", target: "a", wantAllow: false},
		{advance: time.Millisecond, op: "allow", target: "a", wantAllow: true}, // the trial
		{op: "allow", target: "a", wantAllow: false},                           // one trial at a time
		{op: "fail", target: "a"},                                              // trial failed: cool off again
		{advance: 500 * time.Millisecond, op: "allow", target: "a", wantAllow: false},
		{advance: 500 * time.Millisecond, op: "allow", target: "a", wantAllow: true},
		{op: "ok", target: "a"}, // trial succeeded: forgotten
		{op: "allow", target: "a", wantAllow: true},
		{op: "allow", target: "a", wantAllow: true},
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		switch s.op {
		case "allow":
			if got := b.allow(s.target); got != s.wantAllow {
				t.Fatalf("step %d: allow(%s) = %v, want %v", i, s.target, got, s.wantAllow)
			}
		case "ok", "fail":
			b.done(s.target, s.op == "ok")
		}
	}
}

// A workstation that is gone costs one dial timeout, not one per
// connection: the connections right after the failed dial go to the
// original without asking the gateway.
func TestFullRouteDeadWorkstationSkippedWhileCoolingOff(t *testing.T) {
	e := newEnv(t, envOptions{rawOriginal: true, dialTimeout: 300 * time.Millisecond, coolOff: time.Minute})
	target := deadAddr(t)
	e.gw.hangOn(target)
	e.setRoutes(t, api.Route{ID: "1", Target: target, Holder: "alice@laptop"})
	for i := range 3 {
		if got, want := rawExchange(t, e.addr, "hello"), "original\nhello"; got != want {
			t.Fatalf("connection %d: got %q, want %q", i, got, want)
		}
	}
	if got := e.gw.connects(); got != 1 {
		t.Errorf("gateway CONNECTs: got %d, want 1 (the later connections skip the failed target)", got)
	}
	if got := testutil.ToFloat64(e.sc.m.relayErrors); got != 1 {
		t.Errorf("relay errors: got %v, want 1", got)
	}
	if got := testutil.ToFloat64(e.sc.m.passthrough.WithLabelValues(reasonDialFailed)); got != 3 {
		t.Errorf("passthrough{dial_failed}: got %v, want 3", got)
	}
}
