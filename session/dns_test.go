package session

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bridgetun/bridgetun/dnsproxy"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// fakeOS is an OS configurator that records what it was told.
type fakeOS struct {
	mu       sync.Mutex
	applied  []dnsproxy.OSConfig
	restores int
	applyErr error
	mode     string // "" = "fake"
}

func (f *fakeOS) Apply(cfg dnsproxy.OSConfig) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, cfg)
	return f.applyErr
}

func (f *fakeOS) Restore() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores++
	return nil
}

func (f *fakeOS) Mode() string {
	if f.mode == "" {
		return "fake"
	}
	return f.mode
}

// gatewayDNS is the gateway's in-tunnel resolver on loopback: it answers
// api.app.svc.cluster.local.
func gatewayDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc("api.app.svc.cluster.local.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		rr, _ := dns.NewRR("api.app.svc.cluster.local. 5 IN A 10.96.0.20")
		m.Answer = append(m.Answer, rr)
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	ready := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(ready) }
	go func() { _ = srv.ActivateAndServe() }()
	<-ready
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func testDNSConfig(t *testing.T, cs *fake.Clientset, osc *fakeOS) dnsConfig {
	t.Helper()
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := writeFile(resolv, "nameserver 192.0.2.53\nsearch corp.example\n"); err != nil {
		t.Fatal(err)
	}
	cfg := dnsConfig{Client: cs, Namespace: "app", ClusterDomain: "cluster.local", GatewayDNS: gatewayDNS(t),
		Listen: "127.0.0.1:0", StateDir: t.TempDir(), ResolvConf: resolv, Log: testkit.Logger(t)}
	if osc != nil {
		cfg.ConfigureOS, cfg.Link = true, "bt9"
		cfg.NewOS = func(dnsproxy.Detect, *slog.Logger) (dnsproxy.OSConfigurator, error) { return osc, nil }
	}
	return cfg
}

// TestDNSResolvesServicesFromWatch: a bare Service name resolves through
// the gateway once the name watch (run by Run) has seen the Service; Run
// returns after cancel with the watches ended.
func TestDNSResolvesServicesFromWatch(t *testing.T) {
	cs := fake.NewClientset(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "app"}})
	d, err := startDNS(t.Context(), testDNSConfig(t, cs, nil))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var got []string
	testkit.WaitFor(t, 10*time.Second, "api to resolve", func() bool {
		m := new(dns.Msg)
		m.SetQuestion("api.", dns.TypeA)
		r, err := dns.Exchange(m, d.listen)
		if err != nil || len(r.Answer) == 0 {
			return false
		}
		got = []string{r.Answer[0].(*dns.A).A.String()}
		return true
	})
	if !slices.Equal(got, []string{"10.96.0.20"}) {
		t.Errorf("api: got %v, want 10.96.0.20", got)
	}
	if d.mode() != DNSNone {
		t.Errorf("mode: got %q, want none (OS untouched)", d.mode())
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if c, err := net.Dial("udp", d.listen); err == nil {
		c.Close() // UDP dials always succeed; the server being gone is enough
	}
}

// TestDNSConfiguresAndRestoresOS: the OS is pointed at the resolver with
// the namespace's search path, and restored exactly once however often
// Close runs.
func TestDNSConfiguresAndRestoresOS(t *testing.T) {
	osc := &fakeOS{}
	d, err := startDNS(t.Context(), testDNSConfig(t, fake.NewClientset(), osc))
	if err != nil {
		t.Fatal(err)
	}
	if len(osc.applied) != 1 {
		t.Fatalf("applies: got %d, want 1", len(osc.applied))
	}
	a := osc.applied[0]
	host, _, _ := net.SplitHostPort(d.listen)
	if a.Nameserver != host || a.Link != "bt9" || !slices.Contains(a.SearchDomains, "app.svc.cluster.local") {
		t.Errorf("applied %+v, want nameserver %s, link bt9, the namespace's search domains", a, host)
	}
	if !slices.Contains(d.search, "corp.example") || !slices.Equal(d.upstreams, []string{"192.0.2.53:53"}) && !slices.Equal(d.upstreams, []string{"192.0.2.53"}) {
		t.Errorf("status: search %v, upstreams %v; want the machine's kept", d.search, d.upstreams)
	}
	if d.mode() != "fake" {
		t.Errorf("mode: got %q, want the backend's", d.mode())
	}
	_ = d.Close()
	_ = d.Close()
	if osc.restores != 1 {
		t.Errorf("restores: got %d, want 1", osc.restores)
	}
}

// TestDNSApplyFailsLeavesNothing: when the OS refuses, the settings are
// restored, the resolver's port is free again and the error says dns.
func TestDNSApplyFailsLeavesNothing(t *testing.T) {
	osc := &fakeOS{applyErr: errors.New("resolv.conf is immutable")}
	cfg := testDNSConfig(t, fake.NewClientset(), osc)
	port := closedPort(t)
	cfg.Listen = net.JoinHostPort("127.0.0.1", itoa(port))
	_, err := startDNS(t.Context(), cfg)
	if err == nil || err.Error() != "dns: resolv.conf is immutable" {
		t.Fatalf("got %v, want dns: resolv.conf is immutable", err)
	}
	if osc.restores != 1 {
		t.Errorf("restores: got %d, want 1", osc.restores)
	}
	ln, err := net.ListenPacket("udp", cfg.Listen)
	if err != nil {
		t.Fatalf("the resolver's port is still taken: %v", err)
	}
	ln.Close()
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }

// freeLoopbackPair is a port on ip free for both UDP and TCP.
func freeLoopbackPair(t *testing.T, ip string) string {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatalf("no port on %s free for UDP and TCP", ip)
	return ""
}

// TestDNSListenFollowsBackend: with the resolv.conf backend the resolver
// listens on its loopback address (a dead one there is refused at once, so
// glibc moves on to the original nameservers); when that is taken, or with
// a per-link backend, on the tunnel address (Listen).
func TestDNSListenFollowsBackend(t *testing.T) {
	loop := freeLoopbackPair(t, "127.0.0.154")
	tests := []struct {
		name, mode string
		occupy     bool // something else holds the loopback address
		wantLoop   bool
	}{
		{"resolv.conf", "resolv.conf", false, true},
		{"resolv.conf, loopback address taken", "resolv.conf", true, false},
		{"per-link backend", "systemd-resolved", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.occupy {
				pc, err := net.ListenPacket("udp", loop)
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close()
			}
			osc := &fakeOS{mode: tc.mode}
			cfg := testDNSConfig(t, fake.NewClientset(), osc)
			cfg.LoopbackListen = loop
			d, err := startDNS(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if got := d.listen == loop; got != tc.wantLoop {
				t.Errorf("listen %s, want loopback address %s: %v", d.listen, loop, tc.wantLoop)
			}
			host, _, _ := net.SplitHostPort(d.listen)
			if len(osc.applied) != 1 || osc.applied[0].Nameserver != host {
				t.Errorf("OS pointed at %+v, want nameserver %s", osc.applied, host)
			}
		})
	}
}
