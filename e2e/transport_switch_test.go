package e2e

// Live transport switching (issue #15.6) on the real cluster:
//
//	bt-ws: request loop ──► bt0 ══ WireGuard ══╦══ UDP ──► 10.88.0.1:NodePort ──► gateway pod
//	                                           ║   (an nft rule in bt-ws drops this for a while)
//	                                           ╚══ stream: port-forward via the API server :6443 ──► gateway pod
//
// up --transport auto --expose nodeport starts on UDP; the rule makes UDP
// go unanswered, the session moves to the stream under the same WireGuard
// session, and moves back once the rule is gone. Every failed request must
// fall within one 3 s window.

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridgetun/bridgetun/cluster"
)

const switchTable = "bt_e2e_switch" // the nft table this test owns in bt-ws

type request struct {
	start, end time.Time
	err        error
}

func TestTransportSwitch(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	c.DumpOnFailure(t, SampleNamespace)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft missing (e2e/cluster/01-install.sh installs nftables): %v", err)
	}
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	frontendIP := clusterIP(t, ctx, c, "frontend")
	url := "http://" + frontendIP + "/"

	ws := newWorkstation(t, c, "switch", false)
	const metricsAddr = "127.0.0.1:9097"
	out, err := ws.run(ctx, "up", "--background", "--upgrade", "-n", SampleNamespace, "--gateway-image", gatewayImage,
		"--transport", "auto", "--expose", "nodeport", "--metrics-addr", metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("up --transport auto:\n%s", out)
	st, err := ws.status(ctx)
	if err != nil || st.TransportMode != "auto" {
		t.Fatalf("status: transport mode %q, %v; want auto", st.TransportMode, err)
	}
	// A NodePort made by this up (--upgrade replaced the gateway) may not
	// be programmed yet when the first handshake goes out; then the session
	// starts on the stream and its probes move it to UDP.
	if st.Transport != "udp" {
		start := time.Now()
		if err := Eventually(ctx, 90*time.Second, func(ctx context.Context) error {
			st, err = ws.status(ctx)
			if err == nil && st.Transport != "udp" {
				err = fmt.Errorf("transport %s", st.Transport)
			}
			return err
		}); err != nil {
			t.Fatalf("started on the stream and never moved to UDP: %v", err)
		}
		t.Logf("started on the stream, on UDP %s later", time.Since(start).Round(100*time.Millisecond))
	}
	pod := st.GatewayPod
	svc, err := c.Client.CoreV1().Services(SampleNamespace).Get(ctx, cluster.GatewayName, metav1.GetOptions{})
	if err != nil || len(svc.Spec.Ports) == 0 || svc.Spec.Ports[0].NodePort == 0 {
		t.Fatalf("gateway NodePort: %v %v", svc, err)
	}
	nodePort := svc.Spec.Ports[0].NodePort
	expectHTTP(t, ctx, c, url, `"service":"frontend"`)

	// The request loop: one new connection every ~100 ms, 1 s each at most.
	var (
		mu   sync.Mutex
		reqs []request
	)
	loopCtx, stopLoop := context.WithCancel(ctx)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for loopCtx.Err() == nil {
			r := request{start: time.Now()}
			rctx, cancel := context.WithTimeout(loopCtx, 3*time.Second)
			out, err := c.inWS(rctx, c.Testapp, "get", "-timeout", "1s", url)
			cancel()
			if loopCtx.Err() != nil {
				return // cut short by the end of the loop, not by the tunnel
			}
			if err == nil && !strings.Contains(compactJSON(out), `"service":"frontend"`) {
				err = fmt.Errorf("unexpected answer %.100s", out)
			}
			r.end, r.err = time.Now(), err
			mu.Lock()
			reqs = append(reqs, r)
			mu.Unlock()
			select {
			case <-loopCtx.Done():
			case <-tick.C:
			}
		}
	}()
	defer func() { stopLoop(); <-loopDone }()
	succeededSince := func(since time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, r := range reqs {
			if r.err == nil && r.start.After(since) {
				n++
			}
		}
		return n
	}
	waitSuccesses := func(what string, since time.Time, n int) {
		t.Helper()
		if err := Eventually(ctx, 30*time.Second, func(context.Context) error {
			if got := succeededSince(since); got < n {
				return fmt.Errorf("%d requests succeeded %s, want %d", got, what, n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitTransport := func(want string, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		if err := Eventually(ctx, within, func(ctx context.Context) error {
			st, err := ws.status(ctx)
			if err == nil && st.Transport != want {
				err = fmt.Errorf("transport %s (%d switches)", st.Transport, st.TransportSwitch)
			}
			return err
		}); err != nil {
			t.Fatalf("waiting for transport %s: %v", want, err)
		}
		return time.Since(start)
	}

	begin := time.Now()
	waitSuccesses("on UDP before the rule", begin, 10)

	t.Cleanup(func() { dropTable(c) }) // whatever happens, bt-ws gets its UDP back
	rule := fmt.Sprintf("add table inet %[1]s\nadd chain inet %[1]s out { type filter hook output priority 0 ; }\n"+
		"add rule inet %[1]s out ip daddr %[2]s udp dport %[3]d counter drop\n", switchTable, NodeIP, nodePort)
	if out, err := c.inWSStdin(ctx, rule, "nft", "-f", "-"); err != nil {
		t.Fatalf("nft rule: %v\n%s", err, out)
	}
	dropped := time.Now()
	took := waitTransport("stream", 20*time.Second)
	t.Logf("moved to the stream %s after UDP to %s:%d was dropped", took.Round(100*time.Millisecond), NodeIP, nodePort)
	onStream := time.Now()
	waitSuccesses("on the stream", onStream, 20)
	if out, err := c.inWS(ctx, "nft", "list", "table", "inet", switchTable); err == nil {
		t.Logf("rule while on the stream:\n%s", strings.TrimSpace(out))
	}

	dropTable(c)
	restored := time.Now()
	took = waitTransport("udp", 90*time.Second)
	t.Logf("back on UDP %s after the rule was removed", took.Round(100*time.Millisecond))
	backOnUDP := time.Now()
	waitSuccesses("back on UDP", backOnUDP, 10)
	stopLoop()
	<-loopDone

	st, err = ws.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.GatewayPod != pod || st.TransportSwitch < 2 {
		t.Errorf("status after: pod %s (was %s), %d switches; want the same pod and >= 2 switches", st.GatewayPod, pod, st.TransportSwitch)
	}
	metrics, err := c.inWS(ctx, c.Testapp, "get", "http://"+metricsAddr+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"stream", "udp"} {
		if n := metricValue(metrics, `bridgetun_tunnel_transport_switches_total{to="`+to+`"}`); n < 1 {
			t.Errorf("bridgetun_tunnel_transport_switches_total{to=%q}: got %v, want >= 1", to, n)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	var failed []request
	for _, r := range reqs {
		if r.err != nil {
			failed = append(failed, r)
		}
	}
	t.Logf("%d requests from %s: %d failed; UDP dropped at +%s, on the stream at +%s, rule removed at +%s, on UDP at +%s",
		len(reqs), begin.Format(time.TimeOnly), len(failed), dropped.Sub(begin).Round(100*time.Millisecond),
		onStream.Sub(begin).Round(100*time.Millisecond), restored.Sub(begin).Round(100*time.Millisecond), backOnUDP.Sub(begin).Round(100*time.Millisecond))
	if len(failed) == 0 {
		return
	}
	first, last := failed[0].start, failed[len(failed)-1].start
	for _, r := range failed {
		t.Logf("failed: started +%s, took %s: %v", r.start.Sub(begin).Round(10*time.Millisecond), r.end.Sub(r.start).Round(10*time.Millisecond), firstLine(r.err))
	}
	outage := outageAround(reqs, first, last)
	t.Logf("failures started within %s (+%s to +%s); no request succeeded for %s", last.Sub(first).Round(10*time.Millisecond),
		first.Sub(begin).Round(10*time.Millisecond), last.Sub(begin).Round(10*time.Millisecond), outage.Round(10*time.Millisecond))
	if w := last.Sub(first); w > 3*time.Second {
		t.Errorf("failed requests spread over %s, want all within 3s", w.Round(10*time.Millisecond))
	}
}

// dropTable removes the test's nft table from bt-ws; absent is fine.
func dropTable(c *Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = c.inWS(ctx, "nft", "delete", "table", "inet", switchTable)
}

// inWSStdin is inWS with stdin.
func (c *Cluster) inWSStdin(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := c.InWorkstation(ctx, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s (in %s): %w: %s", strings.Join(args, " "), WorkstationNS, err, out)
	}
	return string(out), nil
}

// outageAround is the time from the last success that ended before first
// to the first success that started after last.
func outageAround(reqs []request, first, last time.Time) time.Duration {
	from, to := first, last
	for _, r := range reqs {
		if r.err == nil && r.end.Before(first) {
			from = r.end
		}
		if r.err == nil && r.start.After(last) && to == last {
			to = r.end
		}
	}
	return to.Sub(from)
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
