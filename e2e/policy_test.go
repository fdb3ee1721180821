package e2e

// The gateway's destination policy against the real cluster, from a TUN-mode
// workstation in bt-ws:
//
//	bt-ws ── bt0 ══ stream ══ bridgetun-gateway pod ──► pods, services: dialled
//	  routes: cluster CIDRs + --also-proxy        └──► API server, metadata, kubelet port, other
//	                                                     workstations: refused at the gateway (RST /
//	                                                     ICMP prohibited), counted in its /metrics
//
// Nothing refused leaves the gateway pod: each refusal happens before a dial.

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// refusedFast is how long a refused connect may take at most: far below
// the dial timeout the workstation program waits otherwise.
const refusedFast = 2 * time.Second

func TestDestinationPolicy(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	c.DumpOnFailure(t, SampleNamespace)
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	frontendIP := clusterIP(t, ctx, c, "frontend")
	kube, err := c.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	apiServer := kube.Spec.ClusterIP
	ws := newWorkstation(t, c, "policy", false)
	// A gateway of another build (or installed before the policy) would keep
	// its old arguments: start clean, so install passes this cluster's CIDRs.
	if out, err := ws.run(ctx, "uninstall", "-n", SampleNamespace); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	// The node's own IP is the API server's in this cluster, and a session
	// never routes the API server's address into the tunnel, so the kubelet
	// port is tried on another address outside the cluster's CIDRs (refused
	// the same way: a node reached through --also-proxy); the node-IP branch
	// is TestPolicy's, and HOST_IP reaching the gateway is checked below.
	const (
		metadata     = "169.254.169.254"
		kubeletProbe = "10.88.0.9:10250"
		otherPeer    = "198.19.200.7:22" // a tunnel address: another workstation's
	)
	up := func(t *testing.T, extra ...string) {
		t.Helper()
		args := append([]string{"up", "--background", "-n", SampleNamespace, "--gateway-image", gatewayImage, "--transport", "stream",
			"--also-proxy", metadata + "/32", "--also-proxy", "10.88.0.8/30", "--also-proxy", "198.19.200.0/24"}, extra...)
		out, err := ws.run(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("up:\n%s", out)
	}
	refused := func(t *testing.T, args ...string) {
		t.Helper()
		start := time.Now()
		out, err := c.inWS(ctx, append([]string{c.Testapp}, args...)...)
		took := time.Since(start)
		if err == nil {
			t.Fatalf("%s: succeeded (%s), want refused", strings.Join(args, " "), strings.TrimSpace(out))
		}
		if took > refusedFast {
			t.Errorf("%s: failed after %v (%v), want a refusal within %v", strings.Join(args, " "), took.Round(time.Millisecond), err, refusedFast)
		}
		t.Logf("%s: refused in %v: %s", strings.Join(args, " "), took.Round(time.Millisecond), strings.TrimSpace(out))
	}
	gatewayMetrics := func(t *testing.T) string {
		t.Helper()
		st, err := ws.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := c.Client.CoreV1().Pods(SampleNamespace).ProxyGet("http", st.GatewayPod, "9090", "/metrics", nil).DoRaw(ctx)
		if err != nil {
			t.Fatalf("gateway /metrics via the API server proxy: %v", err)
		}
		return string(raw)
	}

	up(t)
	t.Run("cluster addresses are dialled", func(t *testing.T) {
		expectHTTP(t, ctx, c, "http://"+frontendIP+"/", `"service":"frontend"`)
	})
	t.Run("refused fast", func(t *testing.T) {
		refused(t, "dial", "-timeout", "10s", apiServer+":443")
		refused(t, "dial", "-timeout", "10s", metadata+":80")
		refused(t, "udp", "-timeout", "10s", metadata+":53", "metadata?")
		refused(t, "dial", "-timeout", "10s", kubeletProbe)
		refused(t, "dial", "-timeout", "10s", otherPeer)
	})
	t.Run("refusals counted by reason", func(t *testing.T) {
		m := gatewayMetrics(t)
		for reason, atLeast := range map[string]float64{"api-server": 1, "metadata": 2, "kubelet": 1, "peer": 1} {
			if v := metricValue(m, `bridgetun_gateway_refused_total{reason="`+reason+`"}`); v < atLeast {
				t.Errorf(`bridgetun_gateway_refused_total{reason=%q}: got %v, want >= %v`, reason, v, atLeast)
			}
		}
	})
	t.Run("gateway knows its node and the cluster's CIDRs", func(t *testing.T) {
		logs, err := c.RunKubectl(ctx, "logs", "-n", SampleNamespace, "deploy/bridgetun-gateway")
		if err != nil {
			t.Fatal(err)
		}
		line := ""
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, "destination policy") {
				line = l
			}
		}
		// Pod CIDRs may be inferred (covering /16s) where nodes carry none.
		for _, want := range []string{"node_ip=" + NodeIP, "service_cidrs=[" + ServiceCIDR, "pod_cidrs=[10.244.", "10.96.0.1:443"} {
			if !strings.Contains(line, want) {
				t.Errorf("gateway's policy log line %q: missing %q", line, want)
			}
		}
	})

	st, err := ws.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := ws.run(ctx, "down"); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	if err := waitExited(ctx, st.PID, 30*time.Second); err != nil {
		t.Fatalf("session after down: %v", err)
	}
	up(t, "--allow-api-server")
	t.Run("allow-api-server: the API server answers", func(t *testing.T) {
		if out, err := c.inWS(ctx, c.Testapp, "dial", "-timeout", "10s", apiServer+":443"); err != nil {
			t.Fatalf("dial the API server with --allow-api-server: %v\n%s", err, out)
		}
		// A TLS answer from an unknown CA is still the API server answering.
		out, err := c.inWS(ctx, c.Testapp, "get", "-timeout", "10s", "https://"+apiServer+"/version")
		if err != nil && !strings.Contains(out+err.Error(), "certificate") {
			t.Errorf("GET https://%s/version: %v, want an answer (or a TLS certificate complaint)", apiServer, err)
		}
	})
	t.Run("allow-api-server: metadata still refused", func(t *testing.T) {
		refused(t, "dial", "-timeout", "10s", metadata+":80")
	})
}
