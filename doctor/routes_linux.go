package doctor

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// osRoutes lists the unicast routes of every routing table (a VPN such as
// wg-quick or Tailscale keeps its own table behind a policy rule).
func osRoutes() ([]Route, error) {
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	names := map[int]string{}
	var out []Route
	for _, r := range rs {
		if r.Dst == nil || r.Type != unix.RTN_UNICAST {
			continue
		}
		p, ok := prefixOf(r.Dst)
		if !ok {
			continue
		}
		out = append(out, Route{Dst: p, Dev: linkName(names, r.LinkIndex), Table: r.Table})
	}
	return out, nil
}

// osRules lists the policy-routing rules.
func osRules() ([]Rule, error) {
	rs, err := netlink.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	out := make([]Rule, 0, len(rs))
	for _, r := range rs {
		rule := Rule{Priority: r.Priority, Table: r.Table}
		if r.Src != nil {
			rule.Src, _ = prefixOf(r.Src)
		}
		if r.Dst != nil {
			rule.Dst, _ = prefixOf(r.Dst)
		}
		out = append(out, rule)
	}
	return out, nil
}

// osRouteTo asks the kernel which device a packet to ip leaves by, with
// every policy rule applied.
func osRouteTo(ip netip.Addr) (string, error) {
	rs, err := netlink.RouteGet(net.IP(ip.AsSlice()))
	if err != nil {
		return "", err
	}
	if len(rs) == 0 {
		return "", fmt.Errorf("no route to %s", ip)
	}
	return linkName(map[int]string{}, rs[0].LinkIndex), nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits).Masked(), true
}

func linkName(cache map[int]string, index int) string {
	if n, ok := cache[index]; ok {
		return n
	}
	name := fmt.Sprintf("if%d", index)
	if l, err := netlink.LinkByIndex(index); err == nil {
		name = l.Attrs().Name
	}
	cache[index] = name
	return name
}
