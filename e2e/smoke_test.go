package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// response mirrors e2e/testapp's JSON answer.
type response struct {
	Service    string            `json:"service"`
	Instance   string            `json:"instance"`
	RouteAs    string            `json:"route_as"`
	Config     *string           `json:"config"`
	SecretEnv  map[string]bool   `json:"secret_env"`
	Env        map[string]string `json:"env"`
	Downstream *response         `json:"downstream"`
	Error      string            `json:"error"`
}

func sample(t *testing.T) (*Cluster, context.Context) {
	t.Helper()
	c := Start(t)
	c.DumpOnFailure(t, SampleNamespace)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	if err := c.DeploySample(ctx); err != nil {
		t.Fatalf("deploy sample app: %v", err)
	}
	return c, ctx
}

func runningPods(t *testing.T, c *Cluster, ctx context.Context, app string) []corev1.Pod {
	t.Helper()
	l, err := c.Client.CoreV1().Pods(SampleNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app, FieldSelector: "status.phase=Running"})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no running pod with app=%s", app)
	}
	return out
}

func TestNodeReady(t *testing.T) {
	c := Start(t)
	nodes, err := c.Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 1 {
		t.Fatalf("got %d nodes, want 1", len(nodes.Items))
	}
	for _, cond := range nodes.Items[0].Status.Conditions {
		if cond.Type == corev1.NodeReady && cond.Status != corev1.ConditionTrue {
			t.Fatalf("node %s not Ready: %s", nodes.Items[0].Name, cond.Message)
		}
	}
}

func TestGuardTable(t *testing.T) {
	Start(t)
	out, err := exec.Command("nft", "list", "table", "inet", GuardTable).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table inet %s: %v\n%s", GuardTable, err, out)
	}
	for _, want := range []string{`iifname "bt-ws-h"`, "ws-no-cheat", "ws-only-node-ip", "10.244.0.0/16", "10.96.0.0/16"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("guard table lacks %q:\n%s", want, out)
		}
	}
}

// TestSampleAppInCluster: frontend -> api -> stats answers from inside the cluster, the route-as header reaches
// stats, api sees its ConfigMap file and Secret env, and both stats replicas serve.
func TestSampleAppInCluster(t *testing.T) {
	c, ctx := sample(t)
	fe := runningPods(t, c, ctx, "frontend")[0]
	statsPods := map[string]bool{}
	for _, p := range runningPods(t, c, ctx, "stats") {
		statsPods[p.Name] = true
	}
	seen := map[string]bool{}
	err := Eventually(ctx, 60*time.Second, func(ctx context.Context) error {
		out, err := c.RunKubectl(ctx, "-n", SampleNamespace, "exec", fe.Name, "--", "/testapp", "get", "-H", RouteAsHeader+": alice", "http://frontend."+SampleNamespace+"/")
		if err != nil {
			return err
		}
		var r response
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			return fmt.Errorf("decode %q: %w", out, err)
		}
		if r.Service != "frontend" || r.Instance != fe.Name || r.RouteAs != "alice" {
			return fmt.Errorf("frontend hop: got service %q instance %q route-as %q", r.Service, r.Instance, r.RouteAs)
		}
		api := r.Downstream
		if api == nil || api.Service != "api" || api.RouteAs != "alice" {
			return fmt.Errorf("api hop missing or wrong: %s", out)
		}
		if api.Config == nil || !strings.Contains(*api.Config, "greeting=hello from api-config") {
			return fmt.Errorf("api config file: got %v", api.Config)
		}
		if !api.SecretEnv["API_TOKEN"] || !api.SecretEnv["DB_PASSWORD"] || api.Env["GREETING"] != "hello" {
			return fmt.Errorf("api env: secret %v env %v", api.SecretEnv, api.Env)
		}
		st := api.Downstream
		if st == nil || st.Service != "stats" || st.RouteAs != "alice" || !statsPods[st.Instance] {
			return fmt.Errorf("stats hop missing or wrong: %s", out)
		}
		seen[st.Instance] = true
		if len(seen) < 2 {
			return fmt.Errorf("stats instances seen %v, want both of %v", seen, statsPods)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestWorkstationCannotCheat: bt-ws reaches neither a ClusterIP nor a pod IP before bridgetun runs, not even
// with a route added inside it (the host's guard table drops such forwards), and cluster DNS does not answer.
func TestWorkstationCannotCheat(t *testing.T) {
	c, ctx := sample(t)
	svc, err := c.Client.CoreV1().Services(SampleNamespace).Get(ctx, "frontend", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := runningPods(t, c, ctx, "frontend")[0]
	targets := map[string]string{"ClusterIP": svc.Spec.ClusterIP + ":80", "pod IP": pod.Status.PodIP + ":8080"}
	// sanity: both answer from the host, so a failure from bt-ws is the namespace's doing
	for what, addr := range targets {
		if out, err := exec.CommandContext(ctx, c.Testapp, "dial", "-timeout", "3s", addr).CombinedOutput(); err != nil {
			t.Fatalf("%s %s unreachable from the host itself: %v %s", what, addr, err, out)
		}
	}
	dialFromWS := func(label string) {
		for what, addr := range targets {
			start := time.Now()
			out, err := c.InWorkstationAs(ctx, User, c.Testapp, "dial", "-timeout", "2s", addr).CombinedOutput()
			if err == nil {
				t.Errorf("%s: %s %s reachable from %s: %s", label, what, addr, WorkstationNS, out)
				continue
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("%s: dial %s took %v", label, addr, d)
			}
			t.Logf("%s: %s %s from %s: %s", label, what, addr, WorkstationNS, strings.TrimSpace(string(out)))
		}
	}
	dialFromWS("no route")

	// a root user in the workstation adds routes via the host: the guard still drops the forwarded packets
	for _, cidr := range []string{ServiceCIDR, PodCIDR} {
		if out, err := c.InWorkstation(ctx, "ip", "route", "add", cidr, "via", "10.89.0.1").CombinedOutput(); err != nil {
			t.Fatalf("add route %s in ws: %v %s", cidr, err, out)
		}
		t.Cleanup(func() { c.InWorkstation(context.Background(), "ip", "route", "del", cidr).Run() })
	}
	dialFromWS("with routes")

	if out, err := c.InWorkstationAs(ctx, User, c.Testapp, "lookup", "kubernetes.default.svc."+ClusterDomain).CombinedOutput(); err == nil {
		t.Errorf("cluster DNS answers in %s before bridgetun: %s", WorkstationNS, out)
	}
}

// TestWorkstationKubectl: from bt-ws, as the unprivileged user, the API works: kubectl get, exec and a
// port-forward to a pod fetched through the forward.
func TestWorkstationKubectl(t *testing.T) {
	c, ctx := sample(t)
	pod := runningPods(t, c, ctx, "stats")[0]

	out, err := c.InWorkstationAs(ctx, User, c.Kubectl, "get", "nodes", "-o", "name").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "node/") {
		t.Fatalf("kubectl get nodes in ws: %v %s", err, out)
	}
	out, err = c.InWorkstationAs(ctx, User, c.Kubectl, "-n", SampleNamespace, "exec", pod.Name, "--", "/testapp", "get", "http://api/").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"service": "api"`) {
		t.Fatalf("kubectl exec in ws: %v %s", err, out)
	}
	out, err = c.InWorkstation(ctx, c.Kubectl, "-n", SampleNamespace, "exec", "-i", pod.Name, "--", "cat").CombinedOutput()
	_ = out // stdin closed at once: cat exits 0 with no output
	if err != nil {
		t.Fatalf("kubectl exec -i as root in ws: %v %s", err, out)
	}

	pfCtx, stop := context.WithCancel(ctx)
	defer stop()
	pf := c.InWorkstationAs(pfCtx, User, c.Kubectl, "-n", SampleNamespace, "port-forward", "pod/"+pod.Name, "18080:8080")
	var pfOut strings.Builder
	pf.Stdout, pf.Stderr = &pfOut, &pfOut
	if err := pf.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stop(); pf.Wait() }()
	err = Eventually(ctx, 30*time.Second, func(ctx context.Context) error {
		out, err := c.InWorkstationAs(ctx, User, c.Testapp, "get", "-timeout", "3s", "http://127.0.0.1:18080/pf").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s (port-forward: %s)", err, out, pfOut.String())
		}
		var r response
		if err := json.Unmarshal(out, &r); err != nil || r.Instance != pod.Name {
			return fmt.Errorf("through port-forward got %s, want instance %s", out, pod.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("port-forward from ws: %v", err)
	}
}

// TestWorkstationNodePort: bt-ws reaches NodePorts on the node IP (TCP frontend, UDP echo) — bridgetun's UDP
// transport will use one.
func TestWorkstationNodePort(t *testing.T) {
	c, ctx := sample(t)
	err := Eventually(ctx, 30*time.Second, func(ctx context.Context) error {
		out, err := c.InWorkstationAs(ctx, User, c.Testapp, "get", "-timeout", "3s", "http://"+NodeIP+":30080/").CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"service": "frontend"`) {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	if err != nil {
		t.Errorf("TCP NodePort 30080 from ws: %v", err)
	}
	err = Eventually(ctx, 30*time.Second, func(ctx context.Context) error {
		out, err := c.InWorkstationAs(ctx, User, c.Testapp, "udp", "-timeout", "2s", NodeIP+":30053", "ping-from-ws").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "ping-from-ws" {
			return fmt.Errorf("%v: %q", err, out)
		}
		return nil
	})
	if err != nil {
		t.Errorf("UDP NodePort 30053 from ws: %v", err)
	}
}
