package session

import (
	"net/netip"

	"github.com/bridgetun/bridgetun/cluster"
)

// excludeAddrs removes single addresses from a set of prefixes by splitting
// each prefix that contains one into the halves that do not — so the API
// server's address keeps its own route even inside a routed CIDR.
func excludeAddrs(prefixes []netip.Prefix, addrs []netip.Addr) []netip.Prefix {
	out := prefixes
	for _, a := range addrs {
		var next []netip.Prefix
		for _, p := range out {
			next = append(next, exclude(p.Masked(), a)...)
		}
		out = next
	}
	return out
}

func exclude(p netip.Prefix, a netip.Addr) []netip.Prefix {
	if !p.Contains(a) {
		return []netip.Prefix{p}
	}
	if p.Bits() == a.BitLen() {
		return nil
	}
	lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
	hi := netip.PrefixFrom(upperHalf(p), p.Bits()+1)
	return append(exclude(lo, a), exclude(hi, a)...)
}

// upperHalf returns the first address of p's upper half.
func upperHalf(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bit := p.Bits()
	b[bit/8] |= 0x80 >> (bit % 8)
	a, _ := netip.AddrFromSlice(b)
	return a
}

// tunnelRoutes is what goes into the tunnel: the service and pod CIDRs,
// --also-proxy and the gateway's own address, minus the API server's
// addresses (the session's own connection must never ride the tunnel).
func tunnelRoutes(nets cluster.Networks, alsoProxy []netip.Prefix, gateway netip.Addr, apiServer []netip.Addr) []netip.Prefix {
	want := append(append(append([]netip.Prefix{}, nets.ServiceCIDRs...), nets.PodCIDRs...), alsoProxy...)
	want = append(want, netip.PrefixFrom(gateway, gateway.BitLen()))
	return excludeAddrs(want, apiServer)
}
