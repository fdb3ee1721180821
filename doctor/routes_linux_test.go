package doctor

import (
	"strings"
	"testing"

	"github.com/bridgetun/bridgetun/internal/nstest"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// TestRoutesFromTheKernel: in a namespace of its own with a TUN-like
// device bt0 and a VPN's wg0 whose table 51820 a policy rule consults,
// doctor reads every table and rule from the kernel, asks the kernel
// where 10.96.0.5 goes (wg0: the rule wins) and fails the route check
// naming wg0, its table and its rule.
func TestRoutesFromTheKernel(t *testing.T) {
	testkit.RequireRoot(t)
	lab := nstest.NewLab("doc")
	t.Cleanup(func() { _ = lab.Close() })
	ns, err := lab.NewNS("ws")
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{
		// veth pairs stand in for the TUN and the VPN's device (no dummy
		// module on every kernel); both ends up, so they have carrier.
		{"ip", "link", "add", "bt0", "type", "veth", "peer", "name", "bt0p"},
		{"ip", "link", "add", "wg0", "type", "veth", "peer", "name", "wg0p"},
		{"ip", "link", "set", "bt0", "up"}, {"ip", "link", "set", "bt0p", "up"},
		{"ip", "link", "set", "wg0", "up"}, {"ip", "link", "set", "wg0p", "up"},
		{"ip", "route", "add", "10.96.0.0/12", "dev", "bt0"},
		{"ip", "route", "add", "10.244.0.0/16", "dev", "bt0"},
		{"ip", "route", "add", "10.96.0.0/16", "dev", "wg0", "table", "51820"},
		{"ip", "rule", "add", "priority", "100", "to", "10.96.0.0/16", "lookup", "51820"},
	} {
		if err := ns.Run(cmd...); err != nil {
			t.Fatal(err)
		}
	}
	var vs []Verdict
	var routes []Route
	var rules []Rule
	if err := ns.Do(func() error {
		var err error
		if routes, err = osRoutes(); err != nil {
			return err
		}
		if rules, err = osRules(); err != nil {
			return err
		}
		vs = checkRoutes(Inputs{Status: connected(), System: SystemOf()})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range routes {
		if r.Dev == "wg0" && r.Table == 51820 && r.Dst.String() == "10.96.0.0/16" {
			found = true
		}
	}
	if !found {
		t.Errorf("routes: got %+v, want wg0's 10.96.0.0/16 in table 51820", routes)
	}
	found = false
	for _, r := range rules {
		if r.Priority == 100 && r.Table == 51820 {
			found = true
		}
	}
	if !found {
		t.Errorf("rules: got %+v, want priority 100 → table 51820", rules)
	}
	if len(vs) != 2 || vs[0].Status != Fail || !strings.Contains(vs[0].Detail, "through wg0, not bt0") || !strings.Contains(vs[0].Detail, "table 51820, rule priority 100") {
		t.Errorf("10.96.0.0/12: got %v, want a failure naming wg0, table 51820 and rule 100", vs)
	}
	if len(vs) == 2 && vs[1].Status != OK {
		t.Errorf("10.244.0.0/16: got %v, want ok through bt0", vs[1])
	}
}
