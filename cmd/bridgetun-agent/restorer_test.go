package main

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bridgetun/bridgetun/agent"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// apiWorld is namespace "app" with Service api served by Deployment api
// (one ReplicaSet, one running pod).
func apiWorld() *fake.Clientset {
	sel := map[string]string{"app": "api"}
	tmpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: sel},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "api", Image: "shop/api:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}
	one := int32(1)
	yes := true
	ctrl := func(kind, name, uid string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, UID: types.UID(uid), Controller: &yes}}
	}
	return fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "app"}, Spec: corev1.ServiceSpec{
			Selector: sel, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "app", UID: "dep-api"},
			Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: sel}, Template: tmpl}},
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "api-1", Namespace: "app", UID: "rs-api", Labels: sel, OwnerReferences: ctrl("Deployment", "api", "dep-api")},
			Spec: appsv1.ReplicaSetSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: sel}, Template: tmpl}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "api-1-a", Namespace: "app", Labels: sel, OwnerReferences: ctrl("ReplicaSet", "api-1", "rs-api")},
			Spec: tmpl.Spec, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
	)
}

// countingRestorer counts the sweeps (Patched calls) of the real restorer.
type countingRestorer struct {
	*restorer
	sweeps atomic.Int64
}

func (c *countingRestorer) Patched(ctx context.Context) ([]agent.PatchedWorkload, error) {
	defer c.sweeps.Add(1)
	return c.restorer.Patched(ctx)
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestRestorerHonoursGraceAfterRestart: a gateway that (re)starts with an
// empty table leaves a patched workload alone for the grace the
// workstation recorded on it, then restores it; without a recorded grace
// the short default applies. The old gateway restored a sleeping
// workstation's workload 30 s after its own restart.
func TestRestorerHonoursGraceAfterRestart(t *testing.T) {
	for _, tc := range []struct {
		name          string
		grace         time.Duration // recorded by the patch
		keptFor, upTo time.Duration // still patched after keptFor, restored by upTo
	}{
		{"recorded grace", 15 * time.Minute, 14 * time.Minute, 16 * time.Minute},
		{"no recorded grace", 0, 20 * time.Second, 31 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := apiWorld()
			ctx := t.Context()
			tgt, err := cluster.ResolveInterceptTarget(ctx, cs, "app", "api", "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cluster.PatchWorkload(ctx, cs, tgt, cluster.SidecarSpec{Image: "agent:test", Relay: "10.96.0.99:8083",
				Grace: tc.grace}); err != nil {
				t.Fatal(err)
			}
			ref := tgt.Ref()
			patched := func() bool {
				ok, err := cluster.WorkloadPatchedFor(ctx, cs, ref, tgt.ContainerPort)
				if err != nil {
					t.Fatal(err)
				}
				return ok
			}
			clk := &clock{t: time.Now()}
			r := &countingRestorer{restorer: &restorer{client: cs, ns: "app"}}
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() {
				defer close(done)
				agent.RunOrphanRestorer(rctx, agent.OrphanConfig{Intercepts: agent.NewIntercepts(0, clk.now), Restorer: r,
					Every: 5 * time.Millisecond, Now: clk.now, Log: testkit.Logger(t)})
			}()
			t.Cleanup(func() { cancel(); <-done })
			sweeps := func() {
				n := r.sweeps.Load()
				testkit.WaitFor(t, 10*time.Second, "three sweeps", func() bool { return r.sweeps.Load() >= n+3 })
			}
			sweeps() // started: its start time is taken
			clk.add(tc.keptFor)
			sweeps()
			if !patched() {
				t.Fatalf("restored %s after the gateway's start; want it kept (grace %s)", tc.keptFor, tc.grace)
			}
			clk.add(tc.upTo - tc.keptFor)
			testkit.WaitFor(t, 10*time.Second, "the workload restored", func() bool { return !patched() })
		})
	}
}
