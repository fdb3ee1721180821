package e2e

// bridgetun up against the real cluster, driven from the workstation
// namespace bt-ws, which reaches nothing of the cluster but the API server
// (and NodePorts) unless bridgetun connects it:
//
//	bt-ws ──veth── host/node 10.88.0.1 (API :6443, NodePorts) ── pods 10.244.0.0/24, services 10.96.0.0/16
//	  bridgetun up ══ port-forward (stream) or NodePort (udp) ══ bridgetun-gateway pod ── cluster IPs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridgetun/bridgetun/session"
)

const gatewayImage = "bridgetun.local/bridgetun-agent:dev"

// workstation is one bridgetun session in bt-ws.
type workstation struct {
	c        *Cluster
	bin      string
	stateDir string
	asUser   bool
	env      []string // extra environment for every command (KUBECONFIG of another user)
}

func newWorkstation(t *testing.T, c *Cluster, name string, asUser bool) *workstation {
	t.Helper()
	bin := filepath.Join(c.Repo, "bin", "bridgetun")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s missing: run `make build` (the agent image must come from the same build): %v", bin, err)
	}
	dir, err := os.MkdirTemp("", "bt-e2e-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	if asUser {
		if out, err := exec.Command("chown", User, dir).CombinedOutput(); err != nil {
			t.Fatalf("chown state dir: %v: %s", err, out)
		}
	}
	w := &workstation{c: c, bin: bin, stateDir: dir, asUser: asUser}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = w.run(ctx, "down") // idempotent: fine if the test already ended it
		if t.Failed() {
			for _, f := range []string{"logs/up.out", "logs/bridgetun.log"} {
				if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
					t.Logf("--- %s workstation %s (tail):\n%s", name, f, tailLines(string(b), 60))
					// The whole log outlives the state dir, beside the cluster's logs.
					keep := filepath.Join(StateDir, "logs", "ws-"+name+"-"+strings.ReplaceAll(t.Name(), "/", "_")+"-"+filepath.Base(f))
					if err := os.WriteFile(keep, b, 0o644); err == nil {
						t.Logf("--- whole log: %s", keep)
					}
				}
			}
		}
		os.RemoveAll(dir)
	})
	return w
}

func (w *workstation) cmd(ctx context.Context, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if w.asUser {
		cmd = w.c.InWorkstationAs(ctx, User, append([]string{w.bin}, args...)...)
	} else {
		cmd = w.c.InWorkstation(ctx, append([]string{w.bin}, args...)...)
	}
	cmd.Env = append(cmd.Env, "BRIDGETUN_STATE_DIR="+w.stateDir, "TMPDIR="+w.stateDir)
	cmd.Env = append(cmd.Env, w.env...)
	return cmd
}

func (w *workstation) run(ctx context.Context, args ...string) (string, error) {
	out, err := w.cmd(ctx, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("bridgetun %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (w *workstation) status(ctx context.Context) (session.Status, error) {
	var st session.Status
	out, err := w.cmd(ctx, "status", "--json").Output()
	if err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, err
	}
	if st.State == "down" { // --json says so and exits 0
		return st, errors.New("status: not up")
	}
	return st, nil
}

// inWS runs a program in bt-ws as root (as any workstation program would).
func (c *Cluster) inWS(ctx context.Context, args ...string) (string, error) {
	out, err := c.InWorkstation(ctx, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s (in %s): %w: %s", strings.Join(args, " "), WorkstationNS, err, out)
	}
	return string(out), nil
}

func TestUp(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	c.DumpOnFailure(t, SampleNamespace)
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	sinkIP := clusterIP(t, ctx, c, "sink")
	frontendIP := clusterIP(t, ctx, c, "frontend")
	udpIP := clusterIP(t, ctx, c, "udp-echo")
	statsPod := podIP(t, ctx, c, "app=stats")

	t.Run("workstation cannot reach the cluster before up", func(t *testing.T) {
		if out, err := c.inWS(ctx, c.Testapp, "dial", "-timeout", "2s", frontendIP+":80"); err == nil {
			t.Fatalf("dial %s:80 from bt-ws before up: connected (%s), want failure", frontendIP, out)
		}
	})

	ws := newWorkstation(t, c, "tun", false)
	// A gateway left by an earlier run (another build) would be refused as a
	// version mismatch: start clean, which also proves uninstall.
	if out, err := ws.run(ctx, "uninstall", "-n", SampleNamespace); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	out, err := ws.run(ctx, "up", "--background", "-n", SampleNamespace, "--gateway-image", gatewayImage,
		"--transport", "stream", "--metrics-addr", "127.0.0.1:9091")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("up:\n%s", out)
	for _, want := range []string{"gateway ready", "connected in"} {
		if !strings.Contains(out, want) {
			t.Errorf("up output: missing %q", want)
		}
	}

	t.Run("status", func(t *testing.T) {
		st, err := ws.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != "connected" || st.Transport != "stream" || st.Mode != "tun" || !strings.HasPrefix(st.TunnelAddress, "198.19.") {
			t.Errorf("status: got state %q transport %q mode %q addr %q, want connected/stream/tun/198.19.x", st.State, st.Transport, st.Mode, st.TunnelAddress)
		}
		if st.LastHandshake.IsZero() || st.GatewayVersion != st.ClientVersion {
			t.Errorf("status: handshake %v, gateway %q client %q", st.LastHandshake, st.GatewayVersion, st.ClientVersion)
		}
		for _, r := range []string{ServiceCIDR, "10.244.0.0/24"} {
			if !containsPrefixCovering(st.Routes, r) {
				t.Errorf("routes %v: want one covering %s", st.Routes, r)
			}
		}
	})
	t.Run("http to a ClusterIP", func(t *testing.T) { expectHTTP(t, ctx, c, "http://"+frontendIP+"/", `"service":"frontend"`) })
	t.Run("http to a pod IP", func(t *testing.T) { expectHTTP(t, ctx, c, "http://"+statsPod+":8080/", `"service":"stats"`) })
	t.Run("udp echo", func(t *testing.T) {
		out, err := c.inWS(ctx, c.Testapp, "udp", "-timeout", "5s", udpIP+":5353", "hello-udp")
		if err != nil || !strings.Contains(out, "hello-udp") {
			t.Fatalf("udp echo: got %q, %v", out, err)
		}
	})
	t.Run("32MiB transfer", func(t *testing.T) {
		out, err := c.inWS(ctx, c.Testapp, "source", sinkIP+":9000", fmt.Sprint(32<<20))
		if err != nil {
			t.Fatalf("transfer: %v", err)
		}
		t.Log(strings.TrimSpace(out))
	})
	t.Run("metrics", func(t *testing.T) {
		out, err := c.inWS(ctx, c.Testapp, "get", "http://127.0.0.1:9091/metrics")
		if err != nil {
			t.Fatal(err)
		}
		// The 32 MiB transfer is an upload: it must show in tx. What comes back is
		// mostly ACKs, whose volume depends on segment sizes, so rx only has to move.
		if v := metricValue(out, "bridgetun_tunnel_tx_bytes_total"); v < 32<<20 {
			t.Errorf("client bridgetun_tunnel_tx_bytes_total: got %v, want >= 32 MiB (the upload)", v)
		}
		if v := metricValue(out, "bridgetun_tunnel_rx_bytes_total"); v <= 0 {
			t.Errorf("client bridgetun_tunnel_rx_bytes_total: got %v, want > 0", v)
		}
		st, _ := ws.status(ctx)
		raw, err := c.Client.CoreV1().Pods(SampleNamespace).ProxyGet("http", st.GatewayPod, "9090", "/metrics", nil).DoRaw(ctx)
		if err != nil {
			t.Fatalf("gateway /metrics via the API server proxy: %v", err)
		}
		if v := metricValue(string(raw), "bridgetun_gateway_flows_total"); v < 3 {
			t.Errorf("gateway bridgetun_gateway_flows_total: got %v, want >= 3 (http, pod, transfer)", v)
		}
		if v := metricValue(string(raw), "bridgetun_gateway_peers"); v < 1 {
			t.Errorf("gateway bridgetun_gateway_peers: got %v, want >= 1", v)
		}
	})

	t.Run("port-forward killed mid-session", func(t *testing.T) {
		before, _ := ws.status(ctx)
		// Abort every TCP connection from bt-ws to the API server: the port-forward goes with them.
		if out, err := c.inWS(ctx, "ss", "-K", "dst", NodeIP, "dport", "=", "6443"); err != nil {
			t.Fatalf("ss -K: %v %s", err, out)
		}
		expectHTTPEventually(t, ctx, c, "http://"+frontendIP+"/", `"service":"frontend"`, time.Minute)
		after, err := ws.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after.Reconnects <= before.Reconnects || after.TunnelAddress != before.TunnelAddress {
			t.Errorf("after the cut: reconnects %d (before %d), address %s (before %s): want more reconnects, same address",
				after.Reconnects, before.Reconnects, after.TunnelAddress, before.TunnelAddress)
		}
	})

	t.Run("gateway pod deleted", func(t *testing.T) {
		before, _ := ws.status(ctx)
		// Grace period 0: the pod dies at once, like a node losing it.
		zero := int64(0)
		if err := c.Client.CoreV1().Pods(SampleNamespace).Delete(ctx, before.GatewayPod, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		// A force-deleted pod's container can still run for a moment: the
		// proof is the session moving to the replacement by itself.
		start := time.Now()
		if err := Eventually(ctx, 3*time.Minute, func(ctx context.Context) error {
			st, err := ws.status(ctx)
			if err != nil {
				return err
			}
			if st.GatewayPod == before.GatewayPod || st.State != "connected" {
				return fmt.Errorf("session still on pod %s (%s)", st.GatewayPod, st.State)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("session moved to the new gateway pod after %s", time.Since(start).Round(100*time.Millisecond))
		expectHTTPEventually(t, ctx, c, "http://"+frontendIP+"/", `"service":"frontend"`, time.Minute)
		after, _ := ws.status(ctx)
		if after.GatewayPod == before.GatewayPod || after.TunnelAddress != before.TunnelAddress {
			t.Errorf("after delete: pod %s (was %s), address %s (was %s): want a new pod, same address",
				after.GatewayPod, before.GatewayPod, after.TunnelAddress, before.TunnelAddress)
		}
	})

	t.Run("second workstation, netstack, no root", func(t *testing.T) {
		ws2 := newWorkstation(t, c, "ns", true)
		out, err := ws2.run(ctx, "up", "--background", "--netstack", "-n", SampleNamespace, "--gateway-image", gatewayImage,
			"--transport", "stream", "--forward", "127.0.0.1:18080="+frontendIP+":80", "--forward", "stats=18081")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("up --netstack:\n%s", out)
		expectHTTP(t, ctx, c, "http://127.0.0.1:18080/", `"service":"frontend"`)
		// The proxies, as the unprivileged user, names resolved in the cluster.
		for _, px := range []string{"http://127.0.0.1:3128", "socks5://127.0.0.1:1080"} {
			cmd := c.InWorkstationAs(ctx, User, c.Testapp, "get", "http://frontend/")
			cmd.Env = append(cmd.Env, "HTTP_PROXY="+px)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(compactJSON(string(out)), `"service":"frontend"`) {
				t.Errorf("GET http://frontend/ through %s as %s: %v %.200s", px, User, err, out)
			}
		}
		// run: a pod's environment plus the proxies, as the unprivileged user.
		out, err = ws2.run(ctx, "run", "--service", "api", "--", "sh", "-c", `echo "token=$API_TOKEN greeting=$GREETING proxy=$HTTP_PROXY"`)
		if err != nil || !strings.Contains(out, "token=s3cr3t-token greeting=hello proxy=http://127.0.0.1:3128") {
			t.Errorf("run --service api: got %q, %v; want the pod's secret-backed env and the proxy", out, err)
		}
		if out, err := ws2.run(ctx, "run", "--", c.Testapp, "get", "http://stats/"); err != nil || !strings.Contains(compactJSON(out), `"service":"stats"`) {
			t.Errorf("run -- testapp get http://stats/: got %.200s, %v", out, err)
		}
		// A forwarded Service: its Kubernetes-style variables point at the local forward.
		out, err = ws2.run(ctx, "run", "--", "sh", "-c", c.Testapp+` get http://$STATS_SERVICE_HOST:$STATS_SERVICE_PORT/`)
		if err != nil || !strings.Contains(compactJSON(out), `"service":"stats"`) {
			t.Errorf("run -- testapp get http://$STATS_SERVICE_HOST:$STATS_SERVICE_PORT/: got %.200s, %v", out, err)
		}
		var ee *exec.ExitError
		if _, err := ws2.run(ctx, "run", "--", "sh", "-c", "exit 7"); !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Errorf("run -- sh -c 'exit 7': got %v, want exit code 7", err)
		}
		s1, _ := ws.status(ctx)
		s2, err := ws2.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s1.State != "connected" || s2.State != "connected" || s1.TunnelAddress == s2.TunnelAddress {
			t.Errorf("two workstations: %s %s and %s %s, want both connected with different addresses", s1.State, s1.TunnelAddress, s2.State, s2.TunnelAddress)
		}
		expectHTTP(t, ctx, c, "http://"+frontendIP+"/", `"service":"frontend"`) // the first still works
		if _, err := ws2.run(ctx, "down"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("second up is refused", func(t *testing.T) {
		out, err := ws.run(ctx, "up", "-n", SampleNamespace, "--gateway-image", gatewayImage)
		if err == nil || !strings.Contains(out, "already up") || !strings.Contains(out, "bridgetun status") {
			t.Errorf("second up: got %v %q, want an error pointing at status", err, out)
		}
	})

	t.Run("down leaves nothing", func(t *testing.T) {
		st, _ := ws.status(ctx)
		if _, err := ws.run(ctx, "down"); err != nil {
			t.Fatal(err)
		}
		if out, err := c.inWS(ctx, "ip", "link", "show", "bt0"); err == nil {
			t.Errorf("TUN bt0 still present after down: %s", out)
		}
		routes, _ := c.inWS(ctx, "ip", "route")
		if strings.Contains(routes, "10.96.") || strings.Contains(routes, "10.244.") {
			t.Errorf("cluster routes left after down:\n%s", routes)
		}
		if processRunning(st.PID) {
			t.Errorf("session process %d still running after down", st.PID)
		}
		if _, err := c.inWS(ctx, c.Testapp, "dial", "-timeout", "2s", frontendIP+":80"); err == nil {
			t.Errorf("ClusterIP still reachable after down")
		}
	})

	t.Run("crashed session is repaired by the next up", func(t *testing.T) {
		if _, err := ws.run(ctx, "up", "--background", "-n", SampleNamespace, "--gateway-image", gatewayImage, "--transport", "stream"); err != nil {
			t.Fatal(err)
		}
		st, err := ws.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := exec.Command("kill", "-9", fmt.Sprint(st.PID)).Run(); err != nil {
			t.Fatal(err)
		}
		if err := waitExited(ctx, st.PID, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		out, err := ws.run(ctx, "up", "--background", "-n", SampleNamespace, "--gateway-image", gatewayImage, "--transport", "stream")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "repaired a previous session's leftovers") {
			t.Errorf("up after kill -9: got %q, want it to say what it repaired", out)
		}
		expectHTTP(t, ctx, c, "http://"+frontendIP+"/", `"service":"frontend"`)
		if _, err := ws.run(ctx, "down"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("unpullable gateway image fails fast naming the flag", func(t *testing.T) {
		const gwNS = "bt-badimage"
		_, _ = c.RunKubectl(ctx, "create", "namespace", gwNS)
		defer c.RunKubectl(context.Background(), "delete", "namespace", gwNS, "--wait=false")
		start := time.Now()
		out, err := ws.run(ctx, "up", "-n", SampleNamespace, "--gateway-namespace", gwNS, "--gateway-image", "bridgetun.local/does-not-exist:v0")
		if err == nil || !strings.Contains(out, "--gateway-image") {
			t.Fatalf("up with a missing image: got %v %q, want an error naming --gateway-image", err, out)
		}
		if el := time.Since(start); el > 60*time.Second {
			t.Errorf("failing took %s, want < 60s", el)
		}
		t.Logf("failed in %s: %s", time.Since(start).Round(100*time.Millisecond), strings.TrimSpace(out))
	})

	t.Run("udp transport through the NodePort", func(t *testing.T) {
		out, err := ws.run(ctx, "up", "--background", "-n", SampleNamespace, "--gateway-image", gatewayImage,
			"--transport", "udp", "--expose", "nodeport")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("up --transport udp:\n%s", out)
		st, err := ws.status(ctx)
		if err != nil || st.Transport != "udp" {
			t.Fatalf("status: transport %q, %v; want udp", st.Transport, err)
		}
		expectHTTP(t, ctx, c, "http://"+frontendIP+"/", `"service":"frontend"`)
		// A replaced gateway pod is found within seconds (the pod watch),
		// not at the next registration heartbeat (~200 s): nothing dials a
		// stream on UDP, so nothing else would notice.
		zero := int64(0)
		if err := c.Client.CoreV1().Pods(SampleNamespace).Delete(ctx, st.GatewayPod, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := Eventually(ctx, 60*time.Second, func(ctx context.Context) error {
			now, err := ws.status(ctx)
			if err == nil && now.GatewayPod == st.GatewayPod {
				err = fmt.Errorf("session still on pod %s", now.GatewayPod)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		expectHTTPEventually(t, ctx, c, "http://"+frontendIP+"/", `"service":"frontend"`, 30*time.Second)
		t.Logf("udp: session moved to the new gateway pod and carries traffic %s after the delete", time.Since(start).Round(100*time.Millisecond))
		if el := time.Since(start); el > 60*time.Second {
			t.Errorf("udp: back after %s, want well under the 200 s heartbeat", el.Round(time.Second))
		}
		if _, err := ws.run(ctx, "down"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("auto picks UDP when the NodePort answers", func(t *testing.T) {
		if _, err := ws.run(ctx, "up", "--background", "-n", SampleNamespace, "--gateway-image", gatewayImage); err != nil {
			t.Fatal(err)
		}
		if st, err := ws.status(ctx); err != nil || st.Transport != "udp" {
			t.Errorf("auto: transport %q, %v; want udp", st.Transport, err)
		}
		if _, err := ws.run(ctx, "down"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("auto falls back to the stream within seconds", func(t *testing.T) {
		start := time.Now()
		out, err := ws.run(ctx, "up", "--background", "-n", SampleNamespace, "--gateway-image", gatewayImage,
			"--gateway-endpoint", NodeIP+":1") // nothing answers there
		if err != nil {
			t.Fatal(err)
		}
		if st, err := ws.status(ctx); err != nil || st.Transport != "stream" {
			t.Errorf("auto with a dead UDP endpoint: transport %q, %v; want stream", st.Transport, err)
		}
		if !strings.Contains(out, "using the stream transport") {
			t.Errorf("up output does not say it fell back:\n%s", out)
		}
		t.Logf("connected over the stream %s after start", time.Since(start).Round(100*time.Millisecond))
		expectHTTP(t, ctx, c, "http://"+frontendIP+"/", `"service":"frontend"`)
		if _, err := ws.run(ctx, "down"); err != nil {
			t.Fatal(err)
		}
	})
}

func expectHTTP(t *testing.T, ctx context.Context, c *Cluster, url, want string) {
	t.Helper()
	out, err := c.inWS(ctx, c.Testapp, "get", url)
	if err != nil {
		t.Fatalf("GET %s from bt-ws: %v", url, err)
	}
	if !strings.Contains(compactJSON(out), want) {
		t.Fatalf("GET %s: got %.300s, want it to contain %s", url, out, want)
	}
}

func expectHTTPEventually(t *testing.T, ctx context.Context, c *Cluster, url, want string, within time.Duration) {
	t.Helper()
	start := time.Now()
	err := Eventually(ctx, within, func(ctx context.Context) error {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, err := c.inWS(rctx, c.Testapp, "get", url)
		if err != nil {
			return err
		}
		if !strings.Contains(compactJSON(out), want) {
			return fmt.Errorf("got %.200s", out)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("GET %s never answered: %v", url, err)
	}
	t.Logf("%s answered again after %s", url, time.Since(start).Round(100*time.Millisecond))
}

func clusterIP(t *testing.T, ctx context.Context, c *Cluster, svc string) string {
	t.Helper()
	s, err := c.Client.CoreV1().Services(SampleNamespace).Get(ctx, svc, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Spec.ClusterIP
}

func podIP(t *testing.T, ctx context.Context, c *Cluster, selector string) string {
	t.Helper()
	pods, err := c.Client.CoreV1().Pods(SampleNamespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("pods %s: %v (%d)", selector, err, len(pods.Items))
	}
	return pods.Items[0].Status.PodIP
}

// metricValue sums a metric's samples in Prometheus text.
func metricValue(text, name string) float64 {
	var sum float64
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, name) || (len(l) > len(name) && l[len(name)] != ' ' && l[len(name)] != '{') {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

// containsPrefixCovering reports whether routes include cidr or a set of
// its sub-prefixes (the API server's address may have been cut out).
func containsPrefixCovering(routes []string, cidr string) bool {
	base := strings.TrimSuffix(cidr[:strings.LastIndexByte(cidr, '/')], ".0")
	for _, r := range routes {
		if r == cidr || strings.HasPrefix(r, base) {
			return true
		}
	}
	return false
}

// compactJSON strips insignificant white space from a JSON document so tests
// can match fragments; anything else comes back unchanged.
func compactJSON(s string) string {
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		return s
	}
	return b.String()
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitExited waits up to within for process pid to be gone (or a zombie).
func waitExited(ctx context.Context, pid int, within time.Duration) error {
	return Eventually(ctx, within, func(context.Context) error {
		if processRunning(pid) {
			return fmt.Errorf("process %d still running", pid)
		}
		return nil
	})
}

// processRunning reports whether pid exists and is not a zombie (an exited
// background session waits for init to reap it; it holds nothing).
func processRunning(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}
