package e2e

// Split DNS from the workstation namespace after `bridgetun up`:
//
//	bt-ws: glibc → /etc/resolv.conf (rewritten by up) → bridgetun resolver on the tunnel address
//	         cluster names → gateway 198.19.0.1:53 → kube-dns;  other names → the original
//	         nameserver 10.89.0.1:53, a test server on the host side of bt-ws's veth.

import (
	"context"
	"crypto/sha256"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const upstreamIP = "10.89.0.1" // bt-ws's original nameserver (e2e/cluster/06-workstation.sh)

// startUpstream answers outside.example. with 192.0.2.7 and NXDOMAIN for
// everything else, on the address bt-ws's resolv.conf names.
func startUpstream(t *testing.T) {
	t.Helper()
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; strings.EqualFold(q.Name, "outside.example.") && q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR("outside.example. 30 IN A 192.0.2.7")
			m.Answer = append(m.Answer, rr)
		} else if !strings.EqualFold(q.Name, "outside.example.") {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	for _, netw := range []string{"udp", "tcp"} {
		srv := &dns.Server{Addr: upstreamIP + ":53", Net: netw, Handler: mux}
		ready := make(chan error, 1)
		srv.NotifyStartedFunc = func() { ready <- nil }
		go func() { ready <- srv.ListenAndServe() }()
		if err := <-ready; err != nil {
			t.Fatalf("upstream DNS on %s/%s: %v", upstreamIP, netw, err)
		}
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestSplitDNS(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	c.DumpOnFailure(t, SampleNamespace)
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	startUpstream(t)
	const wsResolv = "/etc/netns/" + WorkstationNS + "/resolv.conf"
	hostsBefore, resolvBefore := fileSum(t, "/etc/hosts"), fileSum(t, wsResolv)
	wsHostsBefore, _ := c.inWS(ctx, "sha256sum", "/etc/hosts")

	frontendIP := clusterIP(t, ctx, c, "frontend")
	pods, err := c.Client.CoreV1().Pods(SampleNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=stats"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("stats pods: %v", err)
	}
	statsIP := pods.Items[0].Status.PodIP

	ws := newWorkstation(t, c, "dns", false)
	if out, err := ws.run(ctx, "up", "--background", "--upgrade", "-n", SampleNamespace, "--gateway-image", gatewayImage, "--transport", "stream"); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(out, "DNS: cluster names resolve") {
		t.Errorf("up output does not report DNS:\n%s", out)
	}

	for _, tc := range []struct{ name, want string }{
		{"frontend", frontendIP},
		{"frontend." + SampleNamespace, frontendIP},
		{"frontend." + SampleNamespace + ".svc", frontendIP},
		{"frontend." + SampleNamespace + ".svc.cluster.local", frontendIP},
		{"stats-headless." + SampleNamespace + ".svc.cluster.local", ""}, // any stats pod
		{strings.ReplaceAll(statsIP, ".", "-") + ".stats-headless." + SampleNamespace + ".svc.cluster.local", statsIP},
		{"outside.example", "192.0.2.7"}, // still goes upstream
	} {
		t.Run("getent "+tc.name, func(t *testing.T) {
			out, err := c.inWS(ctx, "getent", "ahostsv4", tc.name)
			if err != nil {
				t.Fatalf("getent %s: %v", tc.name, err)
			}
			if tc.want != "" && !strings.Contains(out, tc.want) {
				t.Fatalf("getent %s: got %q, want %s", tc.name, out, tc.want)
			}
			if tc.want == "" && !strings.Contains(out, "10.244.") {
				t.Fatalf("getent %s: got %q, want pod IPs", tc.name, out)
			}
		})
	}
	t.Run("http by name", func(t *testing.T) {
		expectHTTP(t, ctx, c, "http://frontend/", `"service":"frontend"`)
		expectHTTP(t, ctx, c, "http://frontend."+SampleNamespace+".svc.cluster.local/", `"service":"frontend"`)
	})
	t.Run("cluster-shaped name that does not exist is NXDOMAIN, fast", func(t *testing.T) {
		start := time.Now()
		out, err := c.inWS(ctx, c.Testapp, "lookup", "nosuch."+SampleNamespace+".svc.cluster.local")
		el := time.Since(start)
		if err == nil {
			t.Fatalf("lookup nosuch: resolved (%s), want NXDOMAIN", out)
		}
		if !strings.Contains(strings.ToLower(out), "no such host") {
			t.Errorf("lookup nosuch: got %q, want no such host", out)
		}
		if el > time.Second {
			t.Errorf("NXDOMAIN took %s, want < 1s", el)
		}
	})
	t.Run("status diagnostics", func(t *testing.T) {
		out, err := ws.run(ctx, "status", "--diagnostics")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"resolv.conf", "dns upstreams:       " + upstreamIP + ":53", "kubernetes.default.svc.cluster.local", "10.96.0.1", "GRPC_DNS_RESOLVER=native"} {
			if !strings.Contains(out, want) {
				t.Errorf("status --diagnostics: missing %q in\n%s", want, out)
			}
		}
	})
	t.Run("down restores resolv.conf; hosts never touched", func(t *testing.T) {
		if _, err := ws.run(ctx, "down"); err != nil {
			t.Fatal(err)
		}
		if fileSum(t, wsResolv) != resolvBefore {
			b, _ := os.ReadFile(wsResolv)
			t.Errorf("%s after down differs from before:\n%s", wsResolv, b)
		}
		if fileSum(t, "/etc/hosts") != hostsBefore {
			t.Errorf("/etc/hosts changed")
		}
		if after, _ := c.inWS(ctx, "sha256sum", "/etc/hosts"); after != wsHostsBefore {
			t.Errorf("bt-ws /etc/hosts changed: %s vs %s", after, wsHostsBefore)
		}
	})
}
