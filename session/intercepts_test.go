package session

import (
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// apiWorld is namespace "app" with Service api (port 80 → 8080) served by
// Deployment api through one ReplicaSet and one Running pod; every access
// review is allowed.
func apiWorld() *fake.Clientset {
	sel := map[string]string{"app": "api"}
	tmpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: sel},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "api", Image: "shop/api:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}
	one := int32(1)
	ctrl := func(kind, name string, uid string) []metav1.OwnerReference {
		t := true
		return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, UID: types.UID(uid), Controller: &t}}
	}
	cs := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "app"}, Spec: corev1.ServiceSpec{
			Selector: sel, ClusterIP: "10.96.0.20",
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "app", UID: "dep-api"},
			Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: sel}, Template: tmpl}},
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "api-1", Namespace: "app", UID: "rs-api", Labels: sel, OwnerReferences: ctrl("Deployment", "api", "dep-api")},
			Spec: appsv1.ReplicaSetSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: sel}, Template: tmpl}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "api-1-a", Namespace: "app", Labels: sel, OwnerReferences: ctrl("ReplicaSet", "api-1", "rs-api")},
			Spec: tmpl.Spec, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: cluster.RelayName, Namespace: "app"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.99"}},
	)
	cs.PrependReactor("create", "selfsubjectaccessreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authorizationv1.SelfSubjectAccessReview{Status: authorizationv1.SubjectAccessReviewStatus{Allowed: true}}, nil
	})
	acceptDryRuns(cs)
	return cs
}

// acceptDryRuns makes cs answer a dry-run create (the patch's check of
// the patched pod) the way an admitting API server does: the object back,
// nothing stored (the fake tracker would store it).
func acceptDryRuns(cs *fake.Clientset) {
	cs.PrependReactor("create", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		c, ok := a.(k8stesting.CreateActionImpl)
		if !ok || !slices.Contains(c.GetCreateOptions().DryRun, metav1.DryRunAll) {
			return false, nil, nil
		}
		return true, c.GetObject(), nil
	})
}

// testInterceptor is an interceptor over apiWorld and a fake gateway, with
// local ports always "listening" and a short rollout wait.
func testInterceptor(t *testing.T, cs *fake.Clientset, g *fakeGateway, cfg interceptConfig) *interceptor {
	t.Helper()
	l := testLink(t, g, linkConfig{Client: gatewayCluster("app", "gw-1")})
	g.patchAs(cs, "app")
	cfg.Client, cfg.Control, cfg.Log = cs, l.control, testkit.Logger(t)
	if cfg.Namespace == "" {
		cfg.Namespace, cfg.GatewayNamespace = "app", "app"
	}
	cfg.PublicKey = "pub"
	if cfg.CheckLocal == nil {
		cfg.CheckLocal = func(int) error { return nil }
	}
	if cfg.Listen == nil {
		cfg.Listen = func(int) (net.Listener, error) { return nil, nil }
	}
	if cfg.RolloutTimeout == 0 {
		cfg.RolloutTimeout = 300 * time.Millisecond
	}
	return newInterceptor(cfg)
}

func deploymentTemplate(t *testing.T, cs *fake.Clientset) corev1.PodTemplateSpec {
	t.Helper()
	d, err := cs.AppsV1().Deployments("app").Get(context.Background(), "api", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template
}

// TestInterceptRefusesBadSpecs: each bad request is one line naming what
// is wrong, and nothing reaches the gateway or the workload.
func TestInterceptRefusesBadSpecs(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec InterceptSpec
		cfg  interceptConfig
		want string
	}{
		{name: "no service", spec: InterceptSpec{LocalPort: 8080}, want: "name a Service"},
		{name: "port zero", spec: InterceptSpec{Service: "api"}, want: "local port 0: want 1-65535"},
		{name: "port too big", spec: InterceptSpec{Service: "api", LocalPort: 70000}, want: "local port 70000"},
		{name: "other namespace", spec: InterceptSpec{Service: "api", LocalPort: 8080},
			cfg: interceptConfig{Namespace: "app", GatewayNamespace: "bt"}, want: "`bridgetun up -n app`"},
		{name: "nothing listens", spec: InterceptSpec{Service: "api", LocalPort: 8080},
			cfg: interceptConfig{CheckLocal: checkLocalPort}, want: "nothing listens on 127.0.0.1:8080"},
		{name: "unknown service", spec: InterceptSpec{Service: "nope", LocalPort: 8080}, want: "service app/nope not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, g := apiWorld(), newFakeGateway(t)
			if tc.cfg.CheckLocal != nil {
				tc.spec.LocalPort = closedPort(t)
				tc.want = strings.ReplaceAll(tc.want, "8080", itoa(tc.spec.LocalPort))
			}
			ic := testInterceptor(t, cs, g, tc.cfg)
			before := deploymentTemplate(t, cs)
			_, err := ic.Intercept(t.Context(), tc.spec, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("got %v, want one line containing %q", err, tc.want)
			}
			if calls := g.recorded(); slices.ContainsFunc(calls, func(c string) bool { return strings.Contains(c, "intercepts") }) {
				t.Errorf("gateway calls: got %q, want none about intercepts", calls)
			}
			if after := deploymentTemplate(t, cs); !equalTemplates(before, after) {
				t.Errorf("the Deployment changed")
			}
		})
	}
}

// TestInterceptConflict: a 409 from the gateway is "intercept refused"
// naming the holder; the workload is untouched and the inbound listener
// closed.
func TestInterceptConflict(t *testing.T) {
	cs, g := apiWorld(), newFakeGateway(t)
	g.addStatus = http.StatusConflict
	ln := &closeRecorder{Listener: mustListen(t)}
	ic := testInterceptor(t, cs, g, interceptConfig{Listen: func(int) (net.Listener, error) { return ln, nil }})
	before := deploymentTemplate(t, cs)
	_, err := ic.Intercept(t.Context(), InterceptSpec{Service: "api", LocalPort: 8080}, nil)
	if err == nil || !strings.Contains(err.Error(), "intercept refused: api is intercepted by bob@laptop") {
		t.Fatalf("got %v, want the refusal naming the holder", err)
	}
	if !equalTemplates(before, deploymentTemplate(t, cs)) {
		t.Error("the Deployment changed after a refusal")
	}
	if !ln.closed() {
		t.Error("the inbound listener is still open after a refusal")
	}
	if len(ic.Infos()) != 0 {
		t.Errorf("intercepts: got %v, want none", ic.Infos())
	}
}

// TestInterceptRolloutFailsLeavesNothing: when the patched pods never come
// up, the gateway is told to forget the intercept and the Deployment gets
// its original template back.
func TestInterceptRolloutFailsLeavesNothing(t *testing.T) {
	cs, g := apiWorld(), newFakeGateway(t)
	ic := testInterceptor(t, cs, g, interceptConfig{})
	before := deploymentTemplate(t, cs)
	_, err := ic.Intercept(t.Context(), InterceptSpec{Service: "api", LocalPort: 8080}, nil)
	if err == nil || !strings.Contains(err.Error(), "nothing left patched") {
		t.Fatalf("got %v, want a rollout error saying nothing is left patched", err)
	}
	calls := g.recorded()
	if !slices.Contains(calls, "gw-1 POST /v1/intercepts") || !slices.Contains(calls, "gw-1 DELETE /v1/intercepts") {
		t.Errorf("gateway calls: got %q, want the intercept added and then dropped", calls)
	}
	if after := deploymentTemplate(t, cs); !equalTemplates(before, after) {
		t.Errorf("the Deployment still differs from its original template:\n%+v", after.Spec.Containers)
	}
}

// TestInterceptRenewReAddsForgotten: ids the gateway forgot (it restarted)
// are added again with the original request, by the re-attach worker.
func TestInterceptRenewReAddsForgotten(t *testing.T) {
	cs, g := apiWorld(), newFakeGateway(t)
	ic := testInterceptor(t, cs, g, interceptConfig{})
	g.patcher = nil // renewals and re-adds only: web has no Service to patch
	tgt, err := cluster.ResolveInterceptTarget(t.Context(), cs, "app", "api", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.PatchWorkload(t.Context(), cs, tgt, cluster.SidecarSpec{Image: "agent:test", Relay: "10.96.0.99:8083"}); err != nil {
		t.Fatal(err)
	}
	add := func(svc, id string, port int) {
		ic.byService[svc] = &interceptState{info: InterceptInfo{ID: id, Service: svc, ContainerPort: 8080, State: InterceptActive},
			req: api.InterceptRequest{Service: svc, Namespace: "app", Port: port}, ref: tgt.Ref(),
			grace: api.DefaultGrace, lastOK: ic.now()}
	}
	add("api", "id-api", 8080)
	add("web", "id-web", 8081)
	g.renewUnknown = []string{"id-web", "id-stranger"}
	ic.renew(t.Context())
	ic.reattachPending(t.Context())
	calls := g.recorded()
	want := []string{"gw-1 POST /v1/intercepts/renew", "gw-1 POST /v1/intercepts"}
	if !slices.Equal(calls, want) {
		t.Errorf("calls: got %q, want %q (one renew, one re-add, nothing for an id that is not ours)", calls, want)
	}
	for _, it := range ic.Infos() {
		if it.State != InterceptActive {
			t.Errorf("%s: got %q (%s), want active", it.Service, it.State, it.StateReason)
		}
	}
}

// TestInterceptRunLeavesAllOnCancel: when the session ends, Run tells the
// gateway about every intercept and restores their workloads before it
// returns.
func TestInterceptRunLeavesAllOnCancel(t *testing.T) {
	cs, g := apiWorld(), newFakeGateway(t)
	ic := testInterceptor(t, cs, g, interceptConfig{RenewEvery: time.Hour})
	closed := 0
	ic.byService["api"] = &interceptState{info: InterceptInfo{ID: "id-api", Service: "api"},
		req: api.InterceptRequest{Service: "api", Namespace: "app"}, ref: cluster.WorkloadRef{Namespace: "app", Kind: "Deployment", Name: "api"},
		closers: []func() error{func() error { closed++; return nil }}}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := ic.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(g.recorded(), "gw-1 DELETE /v1/intercepts") {
		t.Errorf("calls: got %q, want a leave", g.recorded())
	}
	if closed != 1 || len(ic.Infos()) != 0 {
		t.Errorf("after Run: closers run %d times, %d intercepts left; want 1 and 0", closed, len(ic.Infos()))
	}
}

// TestRepairRestoresOnlyUnheld: a crashed session's patched workload comes
// back unless another workstation's intercept at the gateway (routed or
// held) still holds it; this workstation's own entries there are a
// previous session's and are dropped. A patch nothing at the gateway holds
// that records a grace and another workstation's key (a restarted gateway:
// maybe a sleeping colleague's) is left to the gateway.
func TestRepairRestoresOnlyUnheld(t *testing.T) {
	apiW := api.Workload{Namespace: "app", Kind: "Deployment", Name: "api"}
	for _, tc := range []struct {
		name      string
		live      []api.Intercept
		spec      cluster.SidecarSpec
		restored  bool
		wantLeave bool
	}{
		{name: "nothing holds it", restored: true},
		{name: "another's live intercept", live: []api.Intercept{{InterceptRequest: api.InterceptRequest{PublicKey: "other", Workload: apiW}}}},
		{name: "another's hold", live: []api.Intercept{{InterceptRequest: api.InterceptRequest{PublicKey: "other", Workload: apiW}, Held: true}}},
		{name: "our previous session's hold", restored: true, wantLeave: true,
			live: []api.Intercept{{InterceptRequest: api.InterceptRequest{PublicKey: "pub", Namespace: "app", Service: "api", Workload: apiW}, Held: true}}},
		{name: "another's grace after a gateway restart", spec: cluster.SidecarSpec{Grace: 15 * time.Minute, PatchedBy: "other"}},
		{name: "our grace after a gateway restart", spec: cluster.SidecarSpec{Grace: 15 * time.Minute, PatchedBy: "pub"}, restored: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, g := apiWorld(), newFakeGateway(t)
			ic := testInterceptor(t, cs, g, interceptConfig{})
			before := deploymentTemplate(t, cs)
			tgt, err := cluster.ResolveInterceptTarget(t.Context(), cs, "app", "api", "")
			if err != nil {
				t.Fatal(err)
			}
			spec := tc.spec
			spec.Image, spec.Relay = "agent:test", "10.96.0.99:8083"
			if _, err := cluster.PatchWorkload(t.Context(), cs, tgt, spec); err != nil {
				t.Fatal(err)
			}
			g.live = tc.live
			ic.Repair(t.Context())
			if restored := equalTemplates(before, deploymentTemplate(t, cs)); restored != tc.restored {
				t.Errorf("got restored=%v, want %v", restored, tc.restored)
			}
			if left := slices.Contains(g.recorded(), "gw-1 DELETE /v1/intercepts"); left != tc.wantLeave {
				t.Errorf("gateway told to drop an entry: got %v, want %v (calls %q)", left, tc.wantLeave, g.recorded())
			}
		})
	}
}

// TestInboundRelaysToLocalServer: a connection the gateway makes to the
// tunnel listener reaches 127.0.0.1:LOCAL and is counted; leaving cuts the
// ones still open.
func TestInboundRelaysToLocalServer(t *testing.T) {
	local := mustListen(t)
	go func() {
		for {
			c, err := local.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	port := local.Addr().(*net.TCPAddr).Port
	tunnelSide := mustListen(t)
	count := prometheus.NewCounter(prometheus.CounterOpts{Name: "c"})
	ic := testInterceptor(t, apiWorld(), newFakeGateway(t), interceptConfig{Connections: count,
		Listen: func(int) (net.Listener, error) { return tunnelSide, nil }})
	st := &interceptState{}
	if err := ic.listenInbound(st, port); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", tunnelSide.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: got %q, %v; want ping", buf, err)
	}
	if got := testutil.ToFloat64(count); got != 1 {
		t.Errorf("connections counted: got %v, want 1", got)
	}
	st.close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err == nil {
		t.Error("after leave: the relayed connection is still open")
	}
}
