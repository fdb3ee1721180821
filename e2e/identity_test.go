package e2e

// Two developers share one gateway, each with exactly the Role `bridgetun
// install --print-rbac` prints and a ServiceAccount token of their own (no
// install rights, no access to the gateway's key). The gateway tells them
// apart by the identity the API server vouches for: each isolates the same
// Service with a route-as value of their own, and B can neither see A's
// key, nor renew, end or take over A's intercept, nor reach a port of A's
// workstation that A did not intercept.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/nstest"
	"github.com/bridgetun/bridgetun/tunnel"
)

func TestTwoDevelopers(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()
	c.DumpOnFailure(t, SampleNamespace)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := c.RunKubectl(context.Background(), "-n", SampleNamespace, "logs", "-l", "app.kubernetes.io/name=bridgetun-gateway", "--tail", "60")
			t.Logf("--- gateway logs:\n%s", out)
		}
	})
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	frontendURL := "http://" + clusterIP(t, ctx, c, "frontend") + "/"
	statsURL := "http://" + clusterIP(t, ctx, c, "stats") + "/"

	// The admin installs the gateway; the developers cannot.
	admin := newWorkstation(t, c, "admin", false)
	if out, err := admin.run(ctx, "uninstall", "--all", "-n", SampleNamespace); err != nil {
		t.Fatalf("uninstall --all: %v\n%s", err, out)
	}
	if out, err := admin.run(ctx, "install", "-n", SampleNamespace, "--gateway-image", gatewayImage); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	before, _ := apiTemplate(t, ctx, c)

	wa := newWorkstation(t, c, "dev-a", false)
	wb := newWorkstation(t, c, "dev-b", false)
	for _, w := range []struct {
		ws   *workstation
		name string
	}{{wa, "bt-e2e-dev-a"}, {wb, "bt-e2e-dev-b"}} {
		kc, cleanup, err := c.PrintedRBACKubeconfig(ctx, wa.bin, SampleNamespace, w.name, w.ws.stateDir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cleanup)
		w.ws.env = []string{"KUBECONFIG=" + kc}
	}
	t.Cleanup(func() {
		_ = c.Client.RbacV1().Roles(SampleNamespace).Delete(context.Background(), cluster.DeveloperRoleName, metav1.DeleteOptions{})
		_ = c.Client.RbacV1().ClusterRoles().Delete(context.Background(), cluster.DeveloperRoleName, metav1.DeleteOptions{})
	})
	const userA = "system:serviceaccount:" + SampleNamespace + ":bt-e2e-dev-a"

	// The printed Role lets a developer intercept, not run pods: no
	// create pods, no update of workloads (either would let them run a
	// pod as the gateway's ServiceAccount); the gateway patches for them
	// after reviewing the custom "intercept" verb. The real API server's
	// RBAC decides.
	for _, a := range []struct {
		verb, group, resource string
		want                  bool
	}{
		{"create", "", "pods", false},
		{"update", "apps", "deployments", false},
		{"patch", "apps", "deployments", false},
		{api.InterceptVerb, "apps", "deployments", true},
	} {
		sar, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: userA, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + SampleNamespace, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: SampleNamespace, Verb: a.verb, Group: a.group, Resource: a.resource},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != a.want {
			t.Errorf("printed Role: %s %s/%s allowed=%v, want %v", a.verb, a.group, a.resource, sar.Status.Allowed, a.want)
		}
	}

	// `up` works with only the printed Role: A with a TUN device, B in
	// netstack mode beside it (its SOCKS proxy is how B's programs reach
	// the cluster).
	const metricsA = "127.0.0.1:19093"
	if out, err := wa.run(ctx, "up", "--background", "-n", SampleNamespace, "--transport", "stream", "--metrics-addr", metricsA); err != nil {
		t.Fatalf("A: up with the printed Role: %v\n%s", err, out)
	}
	const socksB = "127.0.0.1:11085"
	if out, err := wb.run(ctx, "up", "--background", "--netstack", "-n", SampleNamespace, "--transport", "stream", "--socks", socksB, "--http-proxy=",
		// B routes the workstations' range to the gateway as if to reach A: the gateway's policy refuses it.
		"--also-proxy", api.TunnelNetwork.String()); err != nil {
		t.Fatalf("B: up with the printed Role: %v\n%s", err, out)
	}
	stA, err := wa.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tunnelA := strings.Split(stA.TunnelAddress, "/")[0]

	// wireguard-tools see A's device like any WireGuard interface.
	if out, err := exec.CommandContext(ctx, "wg", "show", stA.TUN).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "interface: "+stA.TUN) || !strings.Contains(string(out), "latest handshake") || !strings.Contains(string(out), "transfer:") {
		t.Errorf("wg show %s: %v\n%s\nwant the gateway peer with its handshake and transfer", stA.TUN, err, out)
	} else {
		t.Logf("wg show %s:\n%s", stA.TUN, out)
	}

	// A isolates api; B is refused the same Service in full and A's
	// route-as value, each in one line naming A.
	localServer(t, ctx, c, false, "127.0.0.1:18091", "api-a", statsURL)
	localServer(t, ctx, c, false, "127.0.0.1:18092", "api-b", statsURL)
	pa := startIntercept(t, ctx, wa, "api", "--port", "18091", "--isolate", "--route-as", "dev-a")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"api", "--port", "18092"}, "is intercepted by " + userA},
		{[]string{"api", "--port", "18092", "--isolate", "--route-as", "dev-a"}, `route-as "dev-a" on service bt-sample/api is taken by ` + userA},
	} {
		out, err := wb.run(ctx, append([]string{"intercept"}, tc.args...)...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("B: intercept %v: %v\n%s\nwant a refusal naming A: %q", tc.args, err, out, tc.want)
		}
	}
	pb := startIntercept(t, ctx, wb, "api", "--port", "18092", "--isolate", "--route-as", "dev-b")

	// Both isolate the same Service with their own route-as values.
	for routeAs, want := range map[string]string{"dev-a": "api-a", "dev-b": "api-b", "": "api"} {
		m, err := frontendEventually(ctx, c, frontendURL, routeAs)
		if err != nil {
			t.Fatal(err)
		}
		if got := hop(m, 1, "service"); got != want {
			t.Errorf("route-as %q: api answered by %q, want %q", routeAs, got, want)
		}
	}

	// B's own calls to the control API, through a port-forward with B's
	// token: A's key is never listed, and nothing B does with it is
	// allowed.
	keyA := workstationKey(t, wa)
	ctlB := controlAs(t, ctx, c, wb.env[0][len("KUBECONFIG="):])
	code, body := ctlB(http.MethodGet, "/v1/intercepts?namespace="+SampleNamespace, nil)
	if code != 200 || !strings.Contains(body, userA) || strings.Contains(body, keyA.PublicKey().String()) || strings.Contains(body, tunnelA) {
		t.Errorf("B lists intercepts: %d %s\nwant A's intercept by holder name, without A's key or tunnel address", code, body)
	}
	var listed []api.Intercept
	_ = json.Unmarshal([]byte(body), &listed)
	var idA string
	for _, it := range listed {
		if strings.HasPrefix(it.Holder, userA) {
			idA = it.ID
		}
	}
	proofB, _ := tunnel.RegistrationProof(keyA, keyA.PublicKey(), []byte("B does not have A's credential")) // any proof B can make is wrong
	for _, tc := range []struct {
		what, method, path string
		in                 any
		wantCode           int
		want               string
	}{
		{"end A's intercept", http.MethodDelete, "/v1/intercepts", api.LeaveRequest{PublicKey: keyA.PublicKey().String(), Namespace: SampleNamespace, Service: "api"}, 403, "belongs to " + userA},
		{"renew A's intercept", http.MethodPost, "/v1/intercepts/renew", api.RenewRequest{PublicKey: keyA.PublicKey().String(), IDs: []string{idA}}, 403, "belongs to " + userA},
		{"re-add A's intercept at port 22", http.MethodPost, "/v1/intercepts", api.InterceptRequest{PublicKey: keyA.PublicKey().String(), Namespace: SampleNamespace, Service: "api",
			Workload: api.Workload{Namespace: SampleNamespace, Kind: "Deployment", Name: "api"}, Port: 22, RouteAs: "dev-a"}, 403, "belongs to " + userA},
		{"register A's key", http.MethodPost, "/v1/register", api.RegisterRequest{PublicKey: keyA.PublicKey().String(), Proof: base64.StdEncoding.EncodeToString(proofB)}, 403, "registration proof does not match"},
	} {
		code, body := ctlB(tc.method, tc.path, tc.in)
		if code != tc.wantCode || !strings.Contains(body, tc.want) || strings.Contains(strings.TrimSpace(body), "\n") {
			t.Errorf("B: %s: got %d %q, want %d, one line containing %q", tc.what, code, body, tc.wantCode, tc.want)
		}
	}
	if m, err := frontendEventually(ctx, c, frontendURL, "dev-a"); err != nil || hop(m, 1, "service") != "api-a" {
		t.Errorf("after B's attempts: route-as dev-a answered by %q (%v), want A's api-a still", hop(m, 1, "service"), err)
	}

	// A's workstation listens on a port it did not intercept; B cannot
	// reach it through the gateway (nor can the gateway itself).
	localServer(t, ctx, c, false, "0.0.0.0:18093", "private-a", "")
	ns, err := nstest.Open(WorkstationNS)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rep, err := socksConnect(ctx, ns, socksB, net.JoinHostPort(tunnelA, "18093"))
	if err == nil && rep == 0 {
		t.Errorf("B reached A's non-intercepted port %s:18093 through the gateway", tunnelA)
	} else if took := time.Since(start); took > 10*time.Second {
		t.Errorf("B's dial of A's port was refused only after %s, want it refused fast", took)
	}
	// Nor does the gateway itself get in: A points its own intercept at that
	// port without opening it locally, as a forged intercept would. The
	// sidecar's relay dial reaches A's workstation, whose inbound filter
	// drops it (and counts it) instead of handing it to the server.
	ctlA := controlAs(t, ctx, c, wa.env[0][len("KUBECONFIG="):])
	realA := api.InterceptRequest{PublicKey: keyA.PublicKey().String(), Namespace: SampleNamespace, Service: "api",
		Workload: api.Workload{Namespace: SampleNamespace, Kind: "Deployment", Name: "api"}, Port: 18091, RouteAs: "dev-a"}
	forged := realA
	forged.Port = 18093
	droppedA := func() float64 {
		out, err := c.inWS(ctx, c.Testapp, "get", "-timeout", "5s", "http://"+metricsA+"/metrics")
		if err != nil {
			t.Fatalf("A's metrics: %v", err)
		}
		return metricValue(out, `bridgetun_tunnel_inbound_dropped_total{proto="tcp"}`)
	}
	droppedBefore := droppedA()
	if code, body := ctlA(http.MethodPost, "/v1/intercepts", forged); code != http.StatusOK {
		t.Fatalf("A points its intercept at port 18093: got %d %s, want 200", code, body)
	}
	var reached bool
	if err := Eventually(ctx, 30*time.Second, func(ctx context.Context) error {
		if m, err := frontendVia(ctx, c, frontendURL, "dev-a"); err == nil && hop(m, 1, "service") == "private-a" {
			reached = true
			return nil
		}
		if got := droppedA(); got <= droppedBefore {
			return fmt.Errorf("A's workstation counted no TCP dropped from the tunnel (%v)", got)
		}
		return nil
	}); err != nil {
		t.Errorf("the gateway's dial of A's port 18093: %v", err)
	}
	if reached {
		t.Errorf("the gateway reached A's non-intercepted port %s:18093: A's private server answered", tunnelA)
	} else {
		t.Logf("the gateway's dials of A's port 18093 were dropped at A: bridgetun_tunnel_inbound_dropped_total{proto=\"tcp\"} %v → %v", droppedBefore, droppedA())
	}
	if code, body := ctlA(http.MethodPost, "/v1/intercepts", realA); code != http.StatusOK {
		t.Fatalf("A points its intercept back at port 18091: got %d %s, want 200", code, body)
	}

	// The gateway's series tell the two developers apart (holder = the
	// verified user), read through the API server's pod proxy.
	gwPods, err := c.Client.CoreV1().Pods(SampleNamespace).List(ctx, metav1.ListOptions{LabelSelector: cluster.LabelName + "=" + cluster.GatewayName})
	if err != nil || len(gwPods.Items) != 1 {
		t.Fatalf("gateway pod: %v (%d pods)", err, len(gwPods.Items))
	}
	const userB = "system:serviceaccount:" + SampleNamespace + ":bt-e2e-dev-b"
	if err := Eventually(ctx, 30*time.Second, func(ctx context.Context) error {
		out, err := c.RunKubectl(ctx, "get", "--raw", fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:%d/proxy/metrics", SampleNamespace, gwPods.Items[0].Name, cluster.MetricsPort))
		if err != nil {
			return err
		}
		for _, series := range []string{
			`bridgetun_gateway_holder_peers{holder="` + userA + `"} 1`,
			`bridgetun_gateway_holder_peers{holder="` + userB + `"} 1`,
			`bridgetun_gateway_holder_relay_total{holder="` + userA + `",result="hit"}`,
			`bridgetun_gateway_holder_bytes_total{direction="rx",holder="` + userB + `"}`,
		} {
			if !strings.Contains(out, series) {
				return fmt.Errorf("gateway metrics lack %s", series)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	pb.stop(t)
	pa.stop(t)
	for _, w := range []*workstation{wa, wb} {
		if out, err := w.run(ctx, "down"); err != nil {
			t.Errorf("down: %v\n%s", err, out)
		}
	}
	if err := Eventually(ctx, 2*time.Minute, func(ctx context.Context) error {
		if got, ann := apiTemplate(t, ctx, c); got != before || ann["bridgetun.io/original-template"] != "" {
			return fmt.Errorf("api Deployment still patched")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// workstationKey reads a workstation's WireGuard private key from its
// state directory.
func workstationKey(t *testing.T, w *workstation) tunnel.Key {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(w.stateDir, "wireguard.key"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := tunnel.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// controlAs returns a function that calls the gateway's control API
// through a port-forward, with the bearer token of kubeconfig kc.
func controlAs(t *testing.T, ctx context.Context, c *Cluster, kc string) func(method, path string, in any) (int, string) {
	t.Helper()
	conn, err := cluster.Connect(ctx, cluster.Options{Kubeconfig: kc})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	token := raw.AuthInfos[raw.Contexts[raw.CurrentContext].AuthInfo].Token
	pod, err := cluster.WaitGatewayReady(ctx, conn.Client, SampleNamespace)
	if err != nil {
		t.Fatal(err)
	}
	dial := cluster.PortForwardDialer(conn.Config, conn.Client, SampleNamespace, pod.Name, cluster.ControlPort)
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		DisableKeepAlives: true,
	}}
	return func(method, path string, in any) (int, string) {
		t.Helper()
		var body io.Reader
		if in != nil {
			b, _ := json.Marshal(in)
			body = bytes.NewReader(b)
		}
		req, _ := http.NewRequestWithContext(ctx, method, "http://gateway"+path, body)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}
