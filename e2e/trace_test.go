package e2e

// bridgetun trace against the real cluster with the sample app (frontend →
// api → stats): every hop is isolated by the developer (route-as
// dev-trace), so each runs a bridgetun sidecar; the trace's own value
// matches no route, so the cluster's copies answer it:
//
//	bt-ws: bridgetun trace http://frontend/ ──TUN══► gateway ─► frontend pod
//	    [sidecar: report, pass on] ─► frontend ─► api [sidecar] ─► api ─► stats [sidecar] ─► stats
//	    each sidecar ─► bridgetun-relay POST /v1/traces/sightings (its pod's token)
//
// First every hop passes the header on (✓ ✓ ✓, exit 0); then api is set to
// drop it (testapp DROP_ROUTE_AS=1) and trace blames api for stats (✗,
// exit 1). Before any intercept no Service takes part (exit 2).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
)

func TestTrace(t *testing.T) {
	c := Start(t)
	// Not t.Context(), and cancelled last: the intercepts' cleanups end
	// them with Ctrl-C (leave restores each workload), which a cancelled
	// context would turn into a kill.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(cancel)
	c.DumpOnFailure(t, SampleNamespace)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, args := range [][]string{
			{"logs", "-l", "app in (frontend,api,stats)", "-c", "bridgetun-sidecar", "--tail", "30", "--prefix"},
			{"logs", "-l", "app.kubernetes.io/name=bridgetun-gateway", "--tail", "60"},
		} {
			out, _ := c.RunKubectl(context.Background(), append([]string{"-n", SampleNamespace}, args...)...)
			t.Logf("--- kubectl %s:\n%s", strings.Join(args, " "), out)
		}
	})
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs after the intercepts' leave: api
	// propagates again for the tests after this one.
	t.Cleanup(func() { undropAPI(t, c) })

	ws := newWorkstation(t, c, "trace", false)
	if out, err := ws.run(ctx, "uninstall", "--all", "-n", SampleNamespace); err != nil {
		t.Fatalf("uninstall --all: %v\n%s", err, out)
	}
	if out, err := ws.run(ctx, "up", "--background", "-n", SampleNamespace, "--gateway-image", gatewayImage, "--transport", "stream"); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	const url = "http://frontend/" // as --help's example: the session's DNS resolves it

	// No Service has a sidecar yet: nothing to judge.
	out, code := traceRun(t, ctx, ws, url)
	if code != 2 || !strings.Contains(out, "inconclusive: no participating Service reported the request") {
		t.Errorf("trace before any intercept: exit %d, want 2 and inconclusive:\n%s", code, out)
	}

	for i, svc := range []string{"frontend", "api", "stats"} {
		listen := fmt.Sprintf("127.0.0.1:%d", 18095+i) // the developer's copy: only dev-trace requests reach it
		localServer(t, ctx, c, false, listen, svc+"-local", "")
		startIntercept(t, ctx, ws, svc, "--port", fmt.Sprint(18095+i), "--isolate", "--route-as", "dev-trace", "--no-mount")
	}

	// Every hop passes the header on. The first traces may meet a pod of
	// the intercepts' rollouts on its way out (no sidecar, not reported):
	// wait for the steady state, then one trace must show all three.
	const allSee = "frontend ✓ → api ✓ → stats ✓\n"
	attempts := 0
	err := Eventually(ctx, 60*time.Second, func(ctx context.Context) error {
		attempts++
		out, code = traceRun(t, ctx, ws, url)
		if code != 0 || !strings.Contains(out, allSee) {
			return fmt.Errorf("exit %d:\n%s", code, out)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("trace with every hop propagating: %v\nwant exit 0 and %q", err, allSee)
	}
	t.Logf("$ bridgetun trace %s   (attempt %d)\n%s", url, attempts, out)
	if !strings.Contains(out, "gateway ✓ (10.") {
		t.Errorf("trace: the gateway's own hop (the connection it forwarded to frontend's address) is missing:\n%s", out)
	}

	// A netstack session (no root, another user) sends the request through
	// its HTTP proxy, with the proxy's credentials from the session.
	wn := newWorkstation(t, c, "trace-netstack", true)
	wn.env = []string{"BRIDGETUN_HTTP_PROXY_AUTH=tracer:pw-" + fmt.Sprint(time.Now().UnixNano())}
	if out, err := wn.run(ctx, "up", "--background", "--netstack", "-n", SampleNamespace, "--transport", "stream",
		"--socks", "127.0.0.1:11087", "--http-proxy", "127.0.0.1:13129"); err != nil {
		t.Fatalf("up --netstack: %v\n%s", err, out)
	}
	out, code = traceRun(t, ctx, wn, url)
	t.Logf("$ bridgetun trace %s   (netstack session, its HTTP proxy)\n%s", url, out)
	if code != 0 || !strings.Contains(out, allSee) {
		t.Errorf("trace from a netstack session: exit %d, want 0 and %q:\n%s", code, allSee, out)
	}
	if out, err := wn.run(ctx, "down"); err != nil {
		t.Errorf("down (netstack): %v\n%s", err, out)
	}

	// api now drops the header on its call to stats.
	dropAPI(t, ctx, c)
	if err := Eventually(ctx, 60*time.Second, func(ctx context.Context) error {
		m, err := frontendVia(ctx, c, url, "dev-nobody")
		if err != nil {
			return err
		}
		if got := hop(m, 1, "route_as"); got != "dev-nobody" {
			return fmt.Errorf("api got route-as %q, want dev-nobody", got)
		}
		if got := hop(m, 2, "route_as"); got != "" {
			return fmt.Errorf("stats got route-as %q from api, want none (DROP_ROUTE_AS=1 not rolled out yet)", got)
		}
		return nil
	}); err != nil {
		t.Fatalf("api with DROP_ROUTE_AS=1: %v", err)
	}
	const dropped = `frontend ✓ → api ✓ → stats ✗ "api dropped it on its call to stats"` + "\n"
	out, code = traceRun(t, ctx, ws, url)
	t.Logf("$ bridgetun trace %s   (api drops the header)\n%s", url, out)
	if code != 1 || !strings.Contains(out, dropped) || !strings.Contains(out, "dropped: stats was called without Kubernetes-Route-As") {
		t.Errorf("trace with api dropping the header: exit %d, want 1 and %q:\n%s", code, dropped, out)
	}
	out, code = traceRun(t, ctx, ws, url, "--json")
	var res struct {
		ID, Verdict string
		Status      int
		Chain       []struct {
			Service    string
			Propagated bool
			Reason     string
		}
		Gateway []struct{ Dst string }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("trace --json: %v:\n%s", err, out)
	}
	if code != 1 || res.Verdict != "dropped" || res.Status != 200 || len(res.Chain) != 3 || res.Chain[2].Service != "stats" || res.Chain[2].Propagated ||
		!res.Chain[0].Propagated || !res.Chain[1].Propagated || !strings.HasPrefix(res.ID, "bt-trace-") || len(res.Gateway) == 0 {
		t.Errorf("trace --json with api dropping the header: exit %d, got %+v", code, res)
	}
}

// traceRun runs `bridgetun trace URL ARGS` in bt-ws and returns its output
// and exit code (-1: it did not run).
func traceRun(t *testing.T, ctx context.Context, ws *workstation, url string, args ...string) (string, int) {
	t.Helper()
	cmd := ws.cmd(ctx, append([]string{"trace", url}, args...)...)
	out, err := cmd.Output() // stdout only: --json's object; errors are one line on stderr
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out) + string(ee.Stderr), ee.ExitCode()
	}
	t.Logf("trace %s: %v", url, err)
	return string(out), -1
}

// dropAPI sets DROP_ROUTE_AS=1 on api's container (the intercept's leave
// restores the template saved before it; undropAPI makes sure).
func dropAPI(t *testing.T, ctx context.Context, c *Cluster) {
	t.Helper()
	patch := `{"spec":{"template":{"spec":{"containers":[{"name":"api","env":[{"name":"DROP_ROUTE_AS","value":"1"}]}]}}}}`
	if _, err := c.Client.AppsV1().Deployments(SampleNamespace).Patch(ctx, "api", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("set DROP_ROUTE_AS on api: %v", err)
	}
	if err := c.WaitRollout(ctx, SampleNamespace, "api"); err != nil {
		t.Fatalf("api rollout with DROP_ROUTE_AS: %v", err)
	}
	// The rollout is done when the new pod is ready; the old one, which
	// still propagates, may serve a moment longer: wait until it is gone.
	if err := Eventually(ctx, 2*time.Minute, func(ctx context.Context) error {
		pods, err := c.Client.CoreV1().Pods(SampleNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=api"})
		if err != nil {
			return err
		}
		for _, p := range pods.Items {
			drops := false
			for _, ct := range p.Spec.Containers {
				for _, e := range ct.Env {
					drops = drops || (ct.Name == "api" && e.Name == "DROP_ROUTE_AS" && e.Value == "1")
				}
			}
			if !drops {
				return fmt.Errorf("pod %s (without DROP_ROUTE_AS) is still there", p.Name)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("api with DROP_ROUTE_AS: %v", err)
	}
}

// undropAPI removes DROP_ROUTE_AS from api's container if it is still there.
func undropAPI(t *testing.T, c *Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	changed := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := c.Client.AppsV1().Deployments(SampleNamespace).Get(ctx, "api", metav1.GetOptions{})
		if err != nil {
			return err
		}
		changed = false
		for i := range d.Spec.Template.Spec.Containers {
			ct := &d.Spec.Template.Spec.Containers[i]
			for j := 0; j < len(ct.Env); j++ {
				if ct.Env[j].Name == "DROP_ROUTE_AS" {
					ct.Env = append(ct.Env[:j], ct.Env[j+1:]...)
					j--
					changed = true
				}
			}
		}
		if !changed {
			return nil
		}
		_, err = c.Client.AppsV1().Deployments(SampleNamespace).Update(ctx, d, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Errorf("cleanup: remove DROP_ROUTE_AS from api: %v", err)
		return
	}
	if changed {
		t.Logf("cleanup: removed DROP_ROUTE_AS from api")
		if err := c.WaitRollout(ctx, SampleNamespace, "api"); err != nil {
			t.Errorf("cleanup: api rollout: %v", err)
		}
	}
}
