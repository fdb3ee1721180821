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
	l := testLink(t, g, linkConfig{Heartbeat: time.Millisecond, Check: time.Millisecond})
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
	g.mu.Lock()
	g.reg.Admitted = true // the new pod has never seen this key
	g.mu.Unlock()
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
		t.Errorf("rehandshakes: got %d, want 1 (when the stream reaches the new pod)", rekeys)
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

// registersAt counts the registrations the fake gateway saw at pod.
func registersAt(g *fakeGateway, pod string) int {
	n := 0
	for _, c := range g.recorded() {
		if c == pod+" POST /v1/register" {
			n++
		}
	}
	return n
}

// runLink runs l until the test ends.
func runLink(t *testing.T, l *gatewayLink) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// TestLinkRunFollowsReplacedPod: with the UDP transport nothing dials the
// stream, so only the pod watch notices a replaced gateway pod: Run
// registers with the new pod and re-keys the tunnel within seconds, not at
// the next heartbeat (an hour here; ~200 s in real life).
func TestLinkRunFollowsReplacedPod(t *testing.T) {
	g := newFakeGateway(t)
	cs := gatewayCluster("app", "gw-1")
	l := testLink(t, g, linkConfig{Client: cs, Heartbeat: time.Hour})
	if err := l.Register(t.Context()); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	rekeys := 0
	l.OnReplaced(func() { mu.Lock(); rekeys++; mu.Unlock() })
	runLink(t, l)
	// The watch looks once when it starts: then it is established.
	testkit.WaitFor(t, 10*time.Second, "the pod watch's first look", func() bool { return registersAt(g, "gw-1") >= 2 })
	g.setDown("gw-1", true)
	deleteGatewayPod(cs, "app", "gw-1")
	addGatewayPod(cs, "app", "gw-2")
	testkit.WaitFor(t, 10*time.Second, "a registration at gw-2", func() bool { return registersAt(g, "gw-2") >= 1 })
	testkit.WaitFor(t, 10*time.Second, "a rehandshake", func() bool { mu.Lock(); defer mu.Unlock(); return rekeys >= 1 })
	if got := l.Pod(); got != "gw-2" {
		t.Errorf("pod: got %q, want gw-2", got)
	}
}

// TestLinkWakeRegistersAgain: when the wall clock jumps (a suspend or a
// SIGSTOP), Run registers at once instead of at the next heartbeat; a
// failed attempt is retried every Check; a gateway that had forgotten this
// workstation (admitted anew) gets a rehandshake.
func TestLinkWakeRegistersAgain(t *testing.T) {
	g := newFakeGateway(t)
	clk := &wallClock{t: time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)}
	idle := func(ctx context.Context, _ func()) { <-ctx.Done() } // no pod watch: the heartbeat alone
	l := testLink(t, g, linkConfig{Heartbeat: time.Hour, Check: 10 * time.Millisecond, Now: clk.now,
		RetryFor: 50 * time.Millisecond, WatchPods: idle})
	if err := l.Register(t.Context()); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	rekeys := 0
	l.OnReplaced(func() { mu.Lock(); rekeys++; mu.Unlock() })
	runLink(t, l)
	// Asleep for a minute (again and again, until Run's heartbeat has
	// seen one), and the gateway unreachable when we wake.
	g.setDown("gw-1", true)
	dials := func() int { g.mu.Lock(); defer g.mu.Unlock(); return g.dials["gw-1"] }
	before := dials()
	testkit.WaitFor(t, 10*time.Second, "a registration attempt after a wake", func() bool {
		clk.add(time.Minute)
		return dials() > before
	})
	g.mu.Lock()
	g.reg.Admitted = true // the gateway forgot us meanwhile
	g.mu.Unlock()
	g.setDown("gw-1", false)
	testkit.WaitFor(t, 10*time.Second, "a registration after the wake", func() bool { return registersAt(g, "gw-1") >= 2 })
	testkit.WaitFor(t, 10*time.Second, "a rehandshake", func() bool { mu.Lock(); defer mu.Unlock(); return rekeys >= 1 })
}

// TestLinkWatchMovesStaleStream: the pod watch switches to a replacement
// pod while the stream still reaches the old one (a force-deleted pod's
// container runs on, or its port-forward hangs): the link drops that
// stream, naming both pods, and the re-key waits for the redial to reach
// the new pod.
func TestLinkWatchMovesStaleStream(t *testing.T) {
	g := newFakeGateway(t)
	cs := gatewayCluster("app", "gw-1")
	l := testLink(t, g, linkConfig{Client: cs, Heartbeat: time.Hour})
	ctx := t.Context()
	if err := l.Register(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := l.StreamDial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // stays "open": nothing ends it but the link
	var mu sync.Mutex
	var rekeys int
	var redials []string
	l.OnReplaced(func() { mu.Lock(); rekeys++; mu.Unlock() })
	l.OnStreamStale(func(reason string) { mu.Lock(); redials = append(redials, reason); mu.Unlock() })
	runLink(t, l)
	testkit.WaitFor(t, 10*time.Second, "the pod watch's first look", func() bool { return registersAt(g, "gw-1") >= 2 })
	deleteGatewayPod(cs, "app", "gw-1")
	addGatewayPod(cs, "app", "gw-2")
	testkit.WaitFor(t, 10*time.Second, "the stale stream dropped", func() bool { mu.Lock(); defer mu.Unlock(); return len(redials) >= 1 })
	mu.Lock()
	if want := "gateway pod gw-1 was replaced by gw-2"; redials[0] != want || rekeys != 0 {
		t.Errorf("after the switch: redials %q, rekeys %d; want [%q], 0 (the re-key waits for the new stream)", redials, rekeys, want)
	}
	mu.Unlock()
	// The bind dials again: the stream reaches gw-2, and that re-keys.
	c2, err := l.StreamDial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	mu.Lock()
	defer mu.Unlock()
	if rekeys != 1 || len(redials) != 1 {
		t.Errorf("after the redial: rekeys %d, redials %d; want 1, 1", rekeys, len(redials))
	}
}
