package session

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/bridgetun/bridgetun/cluster"
)

func TestExcludeAddrs(t *testing.T) {
	for _, tc := range []struct {
		name     string
		prefixes []string
		addrs    []string
		want     []string
	}{
		{"outside", []string{"10.96.0.0/16"}, []string{"10.88.0.1"}, []string{"10.96.0.0/16"}},
		{"inside /30", []string{"10.0.0.0/30"}, []string{"10.0.0.1"}, []string{"10.0.0.0/32", "10.0.0.2/31"}},
		{"exact /32", []string{"10.0.0.1/32"}, []string{"10.0.0.1"}, nil},
	} {
		var ps []netip.Prefix
		for _, p := range tc.prefixes {
			ps = append(ps, netip.MustParsePrefix(p))
		}
		var as []netip.Addr
		for _, a := range tc.addrs {
			as = append(as, netip.MustParseAddr(a))
		}
		var got []string
		for _, p := range excludeAddrs(ps, as) {
			got = append(got, p.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	// A /16 with the address inside: 16 prefixes, none containing it, covering the rest.
	got := excludeAddrs([]netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}, []netip.Addr{netip.MustParseAddr("10.96.7.9")})
	var total uint64
	for _, p := range got {
		if p.Contains(netip.MustParseAddr("10.96.7.9")) {
			t.Fatalf("%s still contains the excluded address", p)
		}
		total += 1 << (32 - p.Bits())
	}
	if total != 65535 || len(got) != 16 {
		t.Errorf("split /16: got %d prefixes covering %d addresses, want 16 covering 65535", len(got), total)
	}
}

// TestTunnelRoutes: cluster CIDRs, --also-proxy and the gateway's address
// go into the tunnel; the API server's address never does, even inside a
// routed CIDR.
func TestTunnelRoutes(t *testing.T) {
	nets := cluster.Networks{
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")},
	}
	got := tunnelRoutes(nets, []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24")}, netip.MustParseAddr("198.19.0.1"),
		[]netip.Addr{netip.MustParseAddr("10.96.0.1")})
	api := netip.MustParseAddr("10.96.0.1")
	for _, p := range got {
		if p.Contains(api) {
			t.Errorf("route %s carries the API server's address", p)
		}
	}
	for _, a := range []string{"10.96.0.2", "10.96.255.254", "10.244.0.9", "192.168.50.1", "198.19.0.1"} {
		if !slices.ContainsFunc(got, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(a)) }) {
			t.Errorf("%s: not routed; routes %v", a, got)
		}
	}
	if slices.ContainsFunc(got, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr("198.19.0.2")) }) {
		t.Errorf("another workstation's tunnel address is routed: %v", got)
	}
}
