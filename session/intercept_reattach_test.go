package session

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// wallClock is a settable wall clock for the interceptor.
type wallClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *wallClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *wallClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// lines records progress lines.
type lines struct {
	mu sync.Mutex
	l  []string
}

func (p *lines) add(format string, args ...any) {
	p.mu.Lock()
	p.l = append(p.l, fmt.Sprintf(format, args...))
	p.mu.Unlock()
}

func (p *lines) all() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.l)
}

// rolledOutWorld is apiWorld whose Deployment reports every replica
// updated and ready, so a patch's rollout wait ends at once.
func rolledOutWorld(t *testing.T) *fake.Clientset {
	t.Helper()
	cs := apiWorld()
	d, err := cs.AppsV1().Deployments("app").Get(context.Background(), "api", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Status = appsv1.DeploymentStatus{Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	if _, err := cs.AppsV1().Deployments("app").UpdateStatus(context.Background(), d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return cs
}

// sleepRig is a real intercept of api (grace 15 min) through a fake
// gateway, with a settable wall clock and recorded progress.
type sleepRig struct {
	cs       *fake.Clientset
	g        *fakeGateway
	ic       *interceptor
	clk      *wallClock
	progress *lines
	ln       *closeRecorder
	rereg    int
}

var apiRef = cluster.WorkloadRef{Namespace: "app", Kind: "Deployment", Name: "api"}

func newSleepRig(t *testing.T) *sleepRig {
	t.Helper()
	r := &sleepRig{cs: rolledOutWorld(t), g: newFakeGateway(t), clk: &wallClock{t: time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)},
		progress: &lines{}, ln: &closeRecorder{Listener: mustListen(t)}}
	r.ic = testInterceptor(t, r.cs, r.g, interceptConfig{
		Now: r.clk.now, Progress: r.progress.add, RolloutTimeout: 5 * time.Second,
		Listen:     func(int) (net.Listener, error) { return r.ln, nil },
		Reregister: func(context.Context) error { r.rereg++; return nil },
	})
	info, err := r.ic.Intercept(t.Context(), InterceptSpec{Service: "api", LocalPort: 8080, Grace: 15 * time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != InterceptActive || info.Grace != 15*time.Minute {
		t.Fatalf("new intercept: got state %q, grace %s; want active, 15m", info.State, info.Grace)
	}
	if !r.patched(t) {
		t.Fatal("the intercept left the Deployment unpatched")
	}
	r.ic.renew(t.Context()) // a renewal loop that was running before the sleep
	return r
}

func (r *sleepRig) patched(t *testing.T) bool {
	t.Helper()
	ok, err := cluster.WorkloadPatchedFor(t.Context(), r.cs, apiRef, 8080)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func (r *sleepRig) info(t *testing.T) InterceptInfo {
	t.Helper()
	infos := r.ic.Infos()
	if len(infos) != 1 {
		t.Fatalf("intercepts: got %+v, want one", infos)
	}
	return infos[0]
}

// deploymentWrites counts updates of the Deployment (a patch or restore:
// each rolls its pods).
func (r *sleepRig) deploymentWrites() int {
	n := 0
	for _, a := range r.cs.Actions() {
		if a.GetVerb() == "update" && a.GetResource().Resource == "deployments" && a.GetSubresource() == "" {
			n++
		}
	}
	return n
}

// wake is the first renewal after this machine was away for d, with the
// gateway answering; unknown: it had dropped the route.
func (r *sleepRig) wake(t *testing.T, d time.Duration, unknown bool) {
	t.Helper()
	r.clk.add(d)
	r.g.mu.Lock()
	r.g.renewUnknown = nil
	if unknown {
		r.g.renewUnknown = []string{"id-api"}
	}
	r.g.mu.Unlock()
	r.ic.renew(t.Context())
}

// TestInterceptReconnecting: failed renewals make the intercept
// reconnecting since the first failure, saying why; once the gateway
// answers again (the route still there) it is active again, with no
// rollout.
func TestInterceptReconnecting(t *testing.T) {
	r := newSleepRig(t)
	writes := r.deploymentWrites()
	r.g.setDown("gw-1", true)
	r.clk.add(5 * time.Second)
	first := r.clk.now()
	r.ic.renew(t.Context())
	r.clk.add(5 * time.Second)
	r.ic.renew(t.Context())
	got := r.info(t)
	if got.State != InterceptReconnecting || !got.StateSince.Equal(first) || !strings.Contains(got.StateReason, "gateway unreachable") {
		t.Fatalf("after failed renewals: got %q since %v (%s); want reconnecting since %v (gateway unreachable)", got.State, got.StateSince, got.StateReason, first)
	}
	if r.ln.closed() {
		t.Error("the local listener closed while reconnecting")
	}
	r.g.setDown("gw-1", false)
	r.wake(t, 5*time.Second, false)
	r.ic.reattachPending(t.Context())
	if got := r.info(t); got.State != InterceptActive || got.StateReason != "" {
		t.Fatalf("after the gateway answered: got %q (%s), want active", got.State, got.StateReason)
	}
	if n := r.deploymentWrites(); n != writes {
		t.Errorf("deployment updates: got %d more, want none (no rollout)", n-writes)
	}
}

// TestInterceptWakeReattachesWithoutRollout: after a sleep longer than the
// lease (the gateway dropped the route) but within the grace, the first
// renewal re-adds the intercept; the workload still runs the sidecar, so
// it is active again without touching the Deployment.
func TestInterceptWakeReattachesWithoutRollout(t *testing.T) {
	r := newSleepRig(t)
	writes := r.deploymentWrites()
	before := len(r.g.recorded())
	r.wake(t, time.Minute, true)
	if got := r.info(t); got.State != InterceptReconnecting || !strings.Contains(got.StateReason, "dropped the route") {
		t.Errorf("right after the wake: got %q (%s), want reconnecting (the route was dropped)", got.State, got.StateReason)
	}
	r.ic.reattachPending(t.Context())
	if got := r.info(t); got.State != InterceptActive {
		t.Fatalf("after re-attaching: got %q (%s), want active", got.State, got.StateReason)
	}
	calls := r.g.recorded()[before:]
	if want := []string{"gw-1 POST /v1/intercepts/renew", "gw-1 POST /v1/intercepts"}; !slices.Equal(calls, want) {
		t.Errorf("gateway calls: got %q, want %q (a renewal, then the re-add)", calls, want)
	}
	if n := r.deploymentWrites(); n != writes {
		t.Errorf("deployment updates: got %d more, want none (no rollout)", n-writes)
	}
	if slices.ContainsFunc(r.progress.all(), func(l string) bool { return strings.Contains(l, "re-patched") }) {
		t.Errorf("progress: got %q, want no re-patch", r.progress.all())
	}
	// The next renewal finds the route: nothing more to do.
	r.wake(t, 5*time.Second, false)
	if got := r.info(t); got.State != InterceptActive {
		t.Errorf("next renewal: got %q, want active", got.State)
	}
}

// TestInterceptWakeRepatchesRestored: when the workload was restored while
// this machine was away (within the grace: a gateway restart, someone's
// uninstall), re-attaching patches it again and says so in one line.
func TestInterceptWakeRepatchesRestored(t *testing.T) {
	r := newSleepRig(t)
	if _, err := cluster.RestoreWorkload(t.Context(), r.cs, apiRef); err != nil {
		t.Fatal(err)
	}
	r.wake(t, 3*time.Minute, true)
	r.ic.reattachPending(t.Context())
	if got := r.info(t); got.State != InterceptActive {
		t.Fatalf("after re-attaching: got %q (%s), want active", got.State, got.StateReason)
	}
	if !r.patched(t) {
		t.Fatal("the Deployment was not patched again")
	}
	want := "re-patched deployment/api: it had been restored while this machine was away"
	if got := r.progress.all(); !slices.Contains(got, want) {
		t.Errorf("progress: got %q, want the line %q", got, want)
	}
	d, err := r.cs.AppsV1().Deployments("app").Get(t.Context(), "api", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if g := d.Annotations[cluster.AnnotationGrace]; g != "15m0s" {
		t.Errorf("grace annotation after the re-patch: got %q, want 15m0s", g)
	}
}

// TestInterceptLostAfterGrace: a sleep longer than the grace loses the
// intercept: one line saying how long, what was restored and how to start
// again; the local listener is released; the entry stays in status until
// leave, which succeeds without a call to the gateway or the cluster; a
// new intercept of the Service would replace it.
func TestInterceptLostAfterGrace(t *testing.T) {
	r := newSleepRig(t)
	// The gateway restored the workload when the grace ran out.
	if _, err := cluster.RestoreWorkload(t.Context(), r.cs, apiRef); err != nil {
		t.Fatal(err)
	}
	r.wake(t, 17*time.Minute, true)
	got := r.info(t)
	want := "this machine was away 17m (grace 15m); the gateway restored deployment/api; start again with `bridgetun intercept api --port 8080`"
	if got.State != InterceptLost || got.StateReason != want {
		t.Fatalf("after a 17 min sleep: got %q: %q\nwant lost: %q", got.State, got.StateReason, want)
	}
	if !r.ln.closed() {
		t.Error("the local listener is still open after the intercept was lost")
	}
	if lines := r.progress.all(); !slices.Contains(lines, "lost the intercept of api: "+want) {
		t.Errorf("progress: got %q, want the lost line", lines)
	}
	// Nothing re-attaches a lost intercept, and renewals leave it alone.
	r.ic.reattachPending(t.Context())
	r.wake(t, 5*time.Second, true)
	if got := r.info(t); got.State != InterceptLost {
		t.Errorf("later: got %q, want still lost", got.State)
	}
	calls, writes := len(r.g.recorded()), len(r.cs.Actions())
	msg, err := r.ic.Leave("api")
	if err != nil || !strings.Contains(msg, "lost") {
		t.Fatalf("leave: got %q, %v; want a success saying it was lost", msg, err)
	}
	if len(r.g.recorded()) != calls || len(r.cs.Actions()) != writes {
		t.Errorf("leave of a lost intercept: gateway calls %q, cluster actions %d; want none", r.g.recorded()[calls:], len(r.cs.Actions())-writes)
	}
	if len(r.ic.Infos()) != 0 {
		t.Errorf("after leave: got %+v, want no intercepts", r.ic.Infos())
	}
}

// TestInterceptLostReplacedByNew: a new intercept of a lost one's Service
// replaces it.
func TestInterceptLostReplacedByNew(t *testing.T) {
	r := newSleepRig(t)
	r.g.setDown("gw-1", true)
	r.wake(t, 20*time.Minute, false) // the gateway unreachable all along
	got := r.info(t)
	if got.State != InterceptLost || !strings.HasPrefix(got.StateReason, "this machine was away 20m (grace 15m); ") {
		t.Fatalf("got %q: %q, want lost after 20m away", got.State, got.StateReason)
	}
	r.g.setDown("gw-1", false)
	r.ln = &closeRecorder{Listener: mustListen(t)}
	info, err := r.ic.Intercept(t.Context(), InterceptSpec{Service: "api", LocalPort: 8080}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != InterceptActive || r.info(t).State != InterceptActive {
		t.Errorf("new intercept: got %q, listed %q; want active", info.State, r.info(t).State)
	}
}

// TestInterceptUnreachablePastGrace: renewals failing for longer than the
// grace (the machine awake, the gateway away) lose the intercept too.
func TestInterceptUnreachablePastGrace(t *testing.T) {
	r := newSleepRig(t)
	r.g.setDown("gw-1", true)
	for range 3 {
		r.clk.add(5 * time.Second)
		r.ic.renew(t.Context())
	}
	if got := r.info(t); got.State != InterceptReconnecting {
		t.Fatalf("got %q, want reconnecting", got.State)
	}
	// Renewals every 5 s keep failing; jump to the end of the grace.
	r.clk.add(15 * time.Minute)
	r.ic.lastAttempt = r.clk.now().Add(-5 * time.Second)
	r.ic.renew(t.Context())
	got := r.info(t)
	if got.State != InterceptLost || !strings.HasPrefix(got.StateReason, "the gateway was unreachable for 15m (grace 15m); ") {
		t.Fatalf("got %q: %q, want lost: the gateway was unreachable", got.State, got.StateReason)
	}
}

// TestInterceptReaddRefusedIsLost: if someone else took the Service while
// this machine was away, the re-add is refused and the intercept is lost,
// naming them.
func TestInterceptReaddRefusedIsLost(t *testing.T) {
	r := newSleepRig(t)
	r.g.mu.Lock()
	r.g.addStatus = 409
	r.g.mu.Unlock()
	r.wake(t, time.Minute, true)
	r.ic.reattachPending(t.Context())
	got := r.info(t)
	if got.State != InterceptLost || !strings.HasPrefix(got.StateReason, "the gateway gave it to someone else: api is intercepted by bob@laptop; ") ||
		!strings.HasSuffix(got.StateReason, "start again once they leave with `bridgetun intercept api --port 8080`") {
		t.Fatalf("got %q: %q, want lost naming the new holder", got.State, got.StateReason)
	}
}

// TestInterceptRenewReregisters: a renewal that says the gateway forgot
// this workstation registers it again.
func TestInterceptRenewReregisters(t *testing.T) {
	r := newSleepRig(t)
	r.g.mu.Lock()
	r.g.unknownPeer = true
	r.g.mu.Unlock()
	r.wake(t, 11*time.Minute, true)
	if r.rereg != 1 {
		t.Errorf("registrations again: got %d, want 1", r.rereg)
	}
	r.ic.reattachPending(t.Context())
	if got := r.info(t); got.State != InterceptActive {
		t.Errorf("got %q (%s), want active", got.State, got.StateReason)
	}
}

// TestInterceptRunReattachesByItself: Run's renewals and worker bring an
// intercept back after a wake with nothing else driving them.
func TestInterceptRunReattachesByItself(t *testing.T) {
	r := newSleepRig(t)
	r.ic.cfg.RenewEvery = 10 * time.Millisecond
	r.g.mu.Lock()
	r.g.renewUnknown = []string{"id-api"}
	r.g.mu.Unlock()
	before := len(r.g.recorded())
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- r.ic.Run(ctx) }()
	testkit.WaitFor(t, 10*time.Second, "a re-add", func() bool {
		return slices.Contains(r.g.recorded()[before:], "gw-1 POST /v1/intercepts")
	})
	r.g.mu.Lock()
	r.g.renewUnknown = nil
	r.g.mu.Unlock()
	testkit.WaitFor(t, 10*time.Second, "the intercept active", func() bool { return r.ic.Infos()[0].State == InterceptActive })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(r.ic.Infos()) != 0 || r.patched(t) {
		t.Error("Run returned with the intercept still in place")
	}
}
