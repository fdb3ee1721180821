package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/doctor"
	"github.com/bridgetun/bridgetun/internal/nstest"
)

// TestDoctor: with a session up in TUN mode on the real cluster, every
// check of `bridgetun doctor` passes (the cluster name through the OS
// resolver, the foreign name through the workstation's own upstream).
// Then another "VPN" in the workstation — its own device, routing table
// and policy rule for part of the service range, as wg-quick or Tailscale
// set up — makes the route check fail naming that device, table and rule,
// and doctor exit 1.
func TestDoctor(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	startUpstream(t)
	w := newWorkstation(t, c, "doctor", false)
	if out, err := w.run(ctx, "up", "--background", "--upgrade", "-n", SampleNamespace, "--gateway-image", gatewayImage); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	st, err := w.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	verdicts := func(wantFail bool) []doctor.Verdict {
		t.Helper()
		out, err := w.cmd(ctx, "doctor", "--json", "--foreign-name", "outside.example").Output()
		if (err != nil) != wantFail {
			t.Fatalf("doctor --json: exit error %v, want failure=%v\n%s", err, wantFail, out)
		}
		var vs []doctor.Verdict
		if err := json.Unmarshal(out, &vs); err != nil {
			t.Fatalf("doctor --json: %v\n%s", err, out)
		}
		return vs
	}
	out, err := w.run(ctx, "doctor", "--foreign-name", "outside.example")
	t.Logf("bridgetun doctor:\n%s", out)
	if err != nil {
		t.Fatalf("doctor on a healthy session: %v", err)
	}
	seen := map[string]bool{}
	for _, v := range verdicts(false) {
		seen[v.Check] = true
		if v.Status != doctor.OK {
			t.Errorf("healthy session: %s: %s %s (%s)", v.Check, v.Status, v.Detail, v.Fix)
		}
	}
	for _, want := range []string{"session", "gateway", "transport", "api-server", "routes", "dns-cluster", "dns-foreign"} {
		if !seen[want] {
			t.Errorf("doctor gave no %s verdict", want)
		}
	}

	// Another VPN takes the first /24 of the session's first route.
	first, err := netip.ParsePrefix(st.Routes[0])
	if err != nil {
		t.Fatal(err)
	}
	stolen := netip.PrefixFrom(first.Addr(), 24).Masked().String()
	ns, err := nstest.Open(WorkstationNS)
	if err != nil {
		t.Fatal(err)
	}
	undo := [][]string{{"ip", "rule", "del", "priority", "90"}, {"ip", "link", "del", "bt-doc-vpn0"}}
	t.Cleanup(func() {
		for _, cmd := range undo {
			_ = ns.Run(cmd...)
		}
	})
	for _, cmd := range [][]string{
		{"ip", "link", "add", "bt-doc-vpn0", "type", "veth", "peer", "name", "bt-doc-vpn1"},
		{"ip", "link", "set", "bt-doc-vpn0", "up"}, {"ip", "link", "set", "bt-doc-vpn1", "up"},
		{"ip", "route", "add", stolen, "dev", "bt-doc-vpn0", "table", "51820"},
		{"ip", "rule", "add", "priority", "90", "to", stolen, "lookup", "51820"},
	} {
		if err := ns.Run(cmd...); err != nil {
			t.Fatal(err)
		}
	}
	var routes []doctor.Verdict
	for _, v := range verdicts(true) {
		if v.Check == "routes" && v.Status == doctor.Fail {
			routes = append(routes, v)
		}
	}
	want := "through bt-doc-vpn0, not " + st.TUN
	if len(routes) != 1 || !strings.Contains(routes[0].Detail, want) || !strings.Contains(routes[0].Detail, "table 51820, rule priority 90") || routes[0].Fix == "" {
		t.Errorf("with another VPN's rule: failed route verdicts %+v, want one containing %q, its table and rule, and a fix", routes, want)
	} else {
		t.Logf("with another VPN's rule: %s", routes[0].Detail)
	}
	for _, cmd := range undo {
		_ = ns.Run(cmd...)
	}

	// A path-MTU black hole on the UDP transport: a link that drops
	// packets over 1400 bytes (and sends no ICMP) between the workstation
	// and the gateway. Handshakes and small queries pass; the full-size
	// inner packet (1420 + 60 bytes of WireGuard over UDP) does not.
	if out, err := w.run(ctx, "down"); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	if out, err := w.run(ctx, "up", "--background", "--upgrade", "-n", SampleNamespace, "--gateway-image", gatewayImage,
		"--transport", "udp", "--expose", "nodeport"); err != nil {
		t.Fatalf("up --transport udp: %v\n%s", err, out)
	}
	if st, err = w.status(ctx); err != nil {
		t.Fatal(err)
	}
	svc, err := c.Client.CoreV1().Services(SampleNamespace).Get(ctx, cluster.GatewayName, metav1.GetOptions{})
	if err != nil || len(svc.Spec.Ports) == 0 || svc.Spec.Ports[0].NodePort == 0 || st.Transport != "udp" {
		t.Fatalf("udp session: transport %q, gateway Service %v (%v)", st.Transport, svc, err)
	}
	gw := netip.AddrPortFrom(netip.MustParseAddr(NodeIP), uint16(svc.Spec.Ports[0].NodePort))
	mtuOf := func(wantFail bool) doctor.Verdict {
		t.Helper()
		for _, v := range verdicts(wantFail) {
			if v.Check == "mtu" {
				return v
			}
		}
		t.Fatal("doctor gave no mtu verdict")
		return doctor.Verdict{}
	}
	if v := mtuOf(false); v.Status != doctor.OK {
		t.Errorf("udp session without a black hole: mtu %s: %s", v.Status, v.Detail)
	}
	const table = "bt_e2e_doctor_mtu"
	t.Cleanup(func() { _ = ns.Run("nft", "delete", "table", "inet", table) })
	for _, cmd := range [][]string{
		{"nft", "add", "table", "inet", table},
		{"nft", "add", "chain", "inet", table, "out", "{ type filter hook output priority 0 ; }"},
		{"nft", "add", "rule", "inet", table, "out", "ip", "daddr", gw.Addr().String(), "udp", "dport", fmt.Sprint(gw.Port()), "ip", "length", "gt", "1400", "drop"},
	} {
		if err := ns.Run(cmd...); err != nil {
			t.Fatalf("%v: %v", cmd, err)
		}
	}
	if v := mtuOf(true); v.Status != doctor.Fail || !strings.Contains(v.Detail, "black hole") || !strings.Contains(v.Fix, "--mtu") {
		t.Errorf("with a 1400-byte black hole: mtu %s: %s (%s), want a failure naming the black hole and --mtu", v.Status, v.Detail, v.Fix)
	} else {
		t.Logf("with a 1400-byte black hole: %s; fix: %s", v.Detail, v.Fix)
	}
}
