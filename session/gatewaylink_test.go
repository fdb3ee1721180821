package session

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

func testLink(t *testing.T, g *fakeGateway, cfg linkConfig) *gatewayLink {
	t.Helper()
	if cfg.Namespace == "" {
		cfg.Namespace = "app"
	}
	if cfg.Pod == "" {
		cfg.Pod = "gw-1"
	}
	if cfg.Client == nil {
		cfg.Client = gatewayCluster(cfg.Namespace, cfg.Pod)
	}
	cfg.DialPod, cfg.PublicKey, cfg.Log = g.dialPod, "pub", testkit.Logger(t)
	return newGatewayLink(cfg)
}

// TestLinkRegistrationRace reads the registration, state and counters while
// the heartbeat and a redial replace them: the old session wrote s.reg from
// both without a lock while Status and the metrics read it. The race
// detector fails this test on such code.
func TestLinkRegistrationRace(t *testing.T) {
	g := newFakeGateway(t)
	l := testLink(t, g, linkConfig{Heartbeat: time.Millisecond})
	if err := l.Register(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = l.Run(ctx) }()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if c, err := l.StreamDial(ctx); err == nil {
				c.Close()
			}
		}
	}()
	testkit.WaitFor(t, 10*time.Second, "5 heartbeats", func() bool {
		_ = l.Registration().Address
		_, _ = l.State(), l.Reconnects()
		return len(g.recorded()) >= 5
	})
	cancel()
	wg.Wait()
	if got := l.Registration().Address; got != "198.19.0.7/32" {
		t.Errorf("address: got %q, want 198.19.0.7/32", got)
	}
}

// TestLinkKeepsClusterDNS: the resolver learnt from discovery when the
// gateway names none survives later registrations (the old heartbeat wiped
// it); one the gateway names wins.
func TestLinkKeepsClusterDNS(t *testing.T) {
	g := newFakeGateway(t)
	l := testLink(t, g, linkConfig{})
	ctx := t.Context()
	if err := l.Register(ctx); err != nil {
		t.Fatal(err)
	}
	l.SetClusterDNS("10.96.0.10")
	if err := l.Register(ctx); err != nil { // the heartbeat's renewal
		t.Fatal(err)
	}
	if got := l.Registration().ClusterDNS; got != "10.96.0.10" {
		t.Errorf("after a renewal: got cluster DNS %q, want the discovered 10.96.0.10", got)
	}
	g.mu.Lock()
	g.reg.ClusterDNS = "10.96.0.53"
	g.mu.Unlock()
	if err := l.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if got := l.Registration().ClusterDNS; got != "10.96.0.53" {
		t.Errorf("gateway names one: got %q, want 10.96.0.53", got)
	}
}

// TestLinkRegisterFollowsReplacedPod: registering while the known pod is
// gone finds the ready replacement and registers there.
func TestLinkRegisterFollowsReplacedPod(t *testing.T) {
	g := newFakeGateway(t)
	cs := gatewayCluster("app", "gw-2")
	g.setDown("gw-1", true)
	l := testLink(t, g, linkConfig{Client: cs})
	if err := l.Register(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := l.Pod(); got != "gw-2" {
		t.Errorf("pod: got %q, want gw-2", got)
	}
	if calls := g.recorded(); !slices.Contains(calls, "gw-2 POST /v1/register") {
		t.Errorf("calls: got %q, want a register at gw-2", calls)
	}
}

// TestLinkRegisterGivesUp: with no gateway answering, Register returns the
// last error once RetryFor has passed instead of hanging.
func TestLinkRegisterGivesUp(t *testing.T) {
	g := newFakeGateway(t)
	g.setDown("gw-1", true)
	l := testLink(t, g, linkConfig{RetryFor: 300 * time.Millisecond})
	err := l.Register(t.Context())
	if err == nil {
		t.Fatal("got no error with the gateway down, want one")
	}
	if got := l.Registration().Address; got != "" {
		t.Errorf("address: got %q, want none", got)
	}
}

// TestLinkStreamDialReplacedPod: a stream redial to a deleted pod finds
// the new one, registers there, re-keys the tunnel once, and counts.
func TestLinkStreamDialReplacedPod(t *testing.T) {
	g := newFakeGateway(t)
	cs := gatewayCluster("app", "gw-1")
	l := testLink(t, g, linkConfig{Client: cs})
	ctx := t.Context()
	if err := l.Register(ctx); err != nil {
		t.Fatal(err)
	}
	rekeys := 0
	l.OnReplaced(func() { rekeys++ })
	c, err := l.StreamDial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	g.setDown("gw-1", true)
	deleteGatewayPod(cs, "app", "gw-1")
	addGatewayPod(cs, "app", "gw-2")
	c, err = l.StreamDial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := l.Pod(); got != "gw-2" {
		t.Errorf("pod: got %q, want gw-2", got)
	}
	if rekeys != 1 {
		t.Errorf("rehandshakes: got %d, want 1", rekeys)
	}
	if got := l.Reconnects(); got != 1 {
		t.Errorf("reconnects: got %d, want 1 (two dials)", got)
	}
	if got := l.State(); got != "connected" {
		t.Errorf("state: got %q, want connected", got)
	}
	if calls := g.recorded(); !slices.Contains(calls, "gw-2 POST /v1/register") {
		t.Errorf("calls: got %q, want a register at gw-2", calls)
	}
}

// TestLinkRunStops: Run returns promptly once ctx ends.
func TestLinkRunStops(t *testing.T) {
	g := newFakeGateway(t)
	l := testLink(t, g, linkConfig{Heartbeat: time.Hour})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
