package doctor

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/session"

	"github.com/miekg/dns"
)

// fakeOS is a System at the seam: routes, rules, the device each address
// leaves by, and a resolver.
type fakeOS struct {
	routes  []Route
	rules   []Rule
	devOf   map[netip.Prefix]string // the device RouteTo answers for addresses in a prefix
	answers map[string][]string
	// blackHole drops probe datagrams longer than this many bytes of IP
	// packet (0 = none): a link with a smaller MTU that filters ICMP.
	blackHole int
}

func (f fakeOS) system(t *testing.T) System {
	var d net.Dialer
	return System{
		Routes: func() ([]Route, error) { return f.routes, nil },
		Rules:  func() ([]Rule, error) { return f.rules, nil },
		RouteTo: func(ip netip.Addr) (string, error) {
			for p, dev := range f.devOf {
				if p.Contains(ip) {
					return dev, nil
				}
			}
			return "eth0", nil
		},
		Resolve: func(_ context.Context, name string) ([]string, error) {
			if a, ok := f.answers[name]; ok {
				return a, nil
			}
			return nil, fmt.Errorf("lookup %s: no such host", name)
		},
		Nameservers: func() []string { return []string{"127.0.0.153"} },
		Dial:        func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) },
		// The probe is the real one, sent to a real DNS server on
		// loopback in place of the cluster's; only the black hole is made up.
		ProbeUDP: func(ctx context.Context, _ string, pkt []byte) ([]byte, error) {
			if f.blackHole > 0 && len(pkt)+ipv4UDPHeader > f.blackHole {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return osProbeUDP(ctx, loopbackDNS(t), pkt)
		},
		InterfaceMTU: func(string) (int, error) { return 1420, nil },
	}
}

// loopbackDNS serves A answers on a loopback UDP port for the test.
func loopbackDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(10, 96, 0, 1)})
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// TestDoctorMTUBlackHole: small probes answered and full-size ones lost
// is a failure naming the MTU and how to lower it; the padded probe is
// exactly the TUN's MTU on the wire.
func TestDoctorMTUBlackHole(t *testing.T) {
	q, err := padTo("kubernetes.default.svc.cluster.local", 1420-ipv4UDPHeader)
	if err != nil || len(q) != 1420-ipv4UDPHeader {
		t.Fatalf("padded query: %d bytes, %v; want %d", len(q), err, 1420-ipv4UDPHeader)
	}
	st := connected()
	st.ClusterDNS = "10.96.0.10"
	healthy := checkMTU(t.Context(), Inputs{Status: st, System: fakeOS{}.system(t), Timeout: 3 * time.Second})
	if healthy.Status != OK || !strings.Contains(healthy.Detail, "1420") {
		t.Errorf("healthy path: got %v, want OK naming 1420", healthy)
	}
	holed := checkMTU(t.Context(), Inputs{Status: st, System: fakeOS{blackHole: 1400}.system(t), Timeout: 300 * time.Millisecond})
	if holed.Status != Fail || !strings.Contains(holed.Detail, "black hole") || !strings.Contains(holed.Fix, "--mtu 1340") {
		t.Errorf("black hole: got %v, want a failure with --mtu 1340", holed)
	}
	st.Mode, st.TUN = "netstack", ""
	if v := checkMTU(t.Context(), Inputs{Status: st, System: fakeOS{}.system(t)}); v.Status != Skip {
		t.Errorf("netstack session: got %v, want skip", v)
	}
}

func connected() *session.Status {
	return &session.Status{State: "connected", PID: 42, Mode: "tun", TUN: "bt0", Transport: "udp",
		GatewayNamespace: "team", GatewayPod: "bridgetun-gateway-1", GatewayVersion: "v1", ClientVersion: "v1",
		Routes: []string{"10.96.0.0/12", "10.244.0.0/16"}, ClusterDomain: "cluster.local", DNSMode: "resolv.conf", DNSListen: "127.0.0.153:53",
		LastHandshake: time.Now().Add(-5 * time.Second), HandshakeAgeSec: 5}
}

func byCheck(vs []Verdict) map[string][]Verdict {
	m := map[string][]Verdict{}
	for _, v := range vs {
		m[v.Check] = append(m[v.Check], v)
	}
	return m
}

// apiServer is a loopback listener standing in for the API server.
func apiServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return "https://" + ln.Addr().String()
}

// TestDoctorNoSession: without a session the session check fails with
// what to do and the session's checks are skipped, not guessed.
func TestDoctorNoSession(t *testing.T) {
	vs := Run(t.Context(), Inputs{StatusErr: session.ErrNotRunning, System: fakeOS{}.system(t)})
	m := byCheck(vs)
	if v := m["session"][0]; v.Status != Fail || !strings.Contains(v.Fix, "bridgetun up") {
		t.Errorf("session: got %v, want a failure saying how to start one", v)
	}
	for _, c := range []string{"gateway", "transport", "routes", "dns-cluster"} {
		if v := m[c][0]; v.Status != Skip {
			t.Errorf("%s: got %v, want skip", c, v)
		}
	}
	if !Failed(vs) {
		t.Error("Failed: got false")
	}
}

// TestDoctorHealthy: a connected session whose routes go through its TUN,
// whose names resolve and whose API server is outside the tunnel passes
// every check.
func TestDoctorHealthy(t *testing.T) {
	os := fakeOS{devOf: map[netip.Prefix]string{netip.MustParsePrefix("10.96.0.0/12"): "bt0", netip.MustParsePrefix("10.244.0.0/16"): "bt0"},
		routes:  []Route{{Dst: netip.MustParsePrefix("10.96.0.0/12"), Dev: "bt0", Table: 254}, {Dst: netip.MustParsePrefix("0.0.0.0/0"), Dev: "eth0", Table: 254}},
		answers: map[string][]string{"kubernetes.default.svc.cluster.local": {"10.96.0.1"}, "example.com": {"192.0.2.1"}}}
	vs := Run(t.Context(), Inputs{Status: connected(), APIServer: apiServer(t), ForeignName: "example.com", System: os.system(t)})
	for _, v := range vs {
		if v.Status != OK {
			t.Errorf("%s: got %v, want ok", v.Check, v)
		}
		if strings.Contains(v.String(), "\n") {
			t.Errorf("%s: verdict spans lines: %q", v.Check, v)
		}
	}
	if Failed(vs) {
		t.Error("Failed: got true")
	}
}

// TestDoctorRouteConflict: another VPN's table with a policy rule takes
// part of the cluster's range: the route check names the device, table
// and rule; an overlapping route the TUN still wins over is a warning.
func TestDoctorRouteConflict(t *testing.T) {
	os := fakeOS{
		devOf: map[netip.Prefix]string{netip.MustParsePrefix("10.96.0.0/12"): "wg0", netip.MustParsePrefix("10.244.0.0/16"): "bt0"},
		routes: []Route{
			{Dst: netip.MustParsePrefix("10.96.0.0/16"), Dev: "wg0", Table: 51820},
			{Dst: netip.MustParsePrefix("10.244.7.0/24"), Dev: "tailscale0", Table: 52},
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), Dev: "eth0", Table: 254},
		},
		rules:   []Rule{{Priority: 5270, Table: 52}, {Priority: 32764, Table: 51820}, {Priority: 32766, Table: 254}},
		answers: map[string][]string{"kubernetes.default.svc.cluster.local": {"10.96.0.1"}},
	}
	m := byCheck(Run(t.Context(), Inputs{Status: connected(), System: os.system(t)}))
	routes := m["routes"]
	if len(routes) != 2 {
		t.Fatalf("routes: got %v, want one verdict per tunnel route", routes)
	}
	if v := routes[0]; v.Status != Fail || !strings.Contains(v.Detail, "through wg0, not bt0") || !strings.Contains(v.Detail, "table 51820, rule priority 32764") {
		t.Errorf("10.96.0.0/12: got %v, want a failure naming wg0, its table and rule", v)
	}
	if v := routes[1]; v.Status != Warn || !strings.Contains(v.Detail, "10.244.7.0/24 via tailscale0 (table 52, rule priority 5270)") {
		t.Errorf("10.244.0.0/16: got %v, want a warning naming tailscale0's route", v)
	}
}

// TestDoctorFailures: each broken part fails its own check with a fix.
func TestDoctorFailures(t *testing.T) {
	st := connected()
	st.GatewayVersion = "v0"
	st.HandshakeAgeSec = 600
	st.LastHandshake = time.Now().Add(-10 * time.Minute)
	st.Routes = append(st.Routes, "127.0.0.0/8") // the API server's address is inside the tunnel
	st.Intercepts = []session.InterceptInfo{{Service: "api", Workload: "Deployment/api", LocalPort: 8080, State: session.InterceptLost, StateReason: "this machine was away 40m (grace 15m)"}}
	os := fakeOS{devOf: map[netip.Prefix]string{netip.MustParsePrefix("0.0.0.0/0"): "bt0"}}
	m := byCheck(Run(t.Context(), Inputs{Status: st, APIServer: apiServer(t), ForeignName: "outside.example", System: os.system(t)}))
	for check, want := range map[string]string{
		"gateway":     "this client is v1",
		"transport":   "last handshake 10m0s ago",
		"api-server":  "is inside the tunnel's route 127.0.0.0/8",
		"dns-cluster": "kubernetes.default.svc.cluster.local did not resolve via 127.0.0.153",
		"dns-foreign": "outside.example did not resolve",
		"intercept":   "this machine was away 40m",
	} {
		v := m[check][0]
		if v.Status == OK || v.Status == Skip || !strings.Contains(v.Detail, want) || v.Fix == "" {
			t.Errorf("%s: got %v, want warn/fail with %q and a fix", check, v, want)
		}
	}
	_, err := net.Dial("tcp", "127.0.0.1:1")
	if v := byCheck(Run(t.Context(), Inputs{Status: connected(), APIServer: "https://127.0.0.1:1", System: os.system(t)}))["api-server"][0]; v.Status != Fail || err == nil || !strings.Contains(v.Detail, "unreachable") {
		t.Errorf("unreachable API server: got %v, want a failure", v)
	}
}

// TestDoctorInterceptSidecars: an active intercept whose Service no sidecar
// polls the gateway for is a warning saying where to look; one with
// sidecars names them; a gateway that does not say changes nothing.
func TestDoctorInterceptSidecars(t *testing.T) {
	st := connected()
	st.Intercepts = []session.InterceptInfo{
		{Service: "api", Namespace: "shop", Workload: "Deployment/api", LocalPort: 8080, State: session.InterceptActive, SidecarsKnown: true},
		{Service: "web", Namespace: "shop", Workload: "Deployment/web", LocalPort: 8081, State: session.InterceptActive, SidecarsKnown: true, Sidecars: []string{"web-1", "web-2"}},
		{Service: "old", Namespace: "shop", Workload: "Deployment/old", LocalPort: 8082, State: session.InterceptActive},
	}
	vs := checkIntercepts(Inputs{Status: st})
	if len(vs) != 3 {
		t.Fatalf("got %d verdicts, want 3", len(vs))
	}
	if v := vs[0]; v.Status != Warn || !strings.Contains(v.Detail, "no sidecar of Deployment/api polls") || !strings.Contains(v.Fix, "kubectl -n shop get pods") {
		t.Errorf("no sidecar: got %v", v)
	}
	if v := vs[1]; v.Status != OK || !strings.Contains(v.Detail, "sidecars polling the gateway: web-1, web-2") {
		t.Errorf("two sidecars: got %v", v)
	}
	if v := vs[2]; v.Status != OK || strings.Contains(v.Detail, "sidecar") {
		t.Errorf("unknown sidecars: got %v", v)
	}
}
