package dnsproxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
)

// ResolvedBus is the part of org.freedesktop.resolve1.Manager bridgetun
// uses. Tests inject a fake; the real one talks D-Bus.
type ResolvedBus interface {
	// SetLinkDNS sets the link's DNS servers (SetLinkDNS(ia(iay))).
	SetLinkDNS(ifindex int, servers []netip.Addr) error
	// SetLinkDomains sets the link's search and routing domains (SetLinkDomains(ia(sb))).
	SetLinkDomains(ifindex int, domains []ResolvedDomain) error
	// SetLinkDefaultRoute says whether names outside all routing domains may use the link.
	SetLinkDefaultRoute(ifindex int, enable bool) error
	// RevertLink drops everything set on the link.
	RevertLink(ifindex int) error
}

// ResolvedDomain is one (domain, routing-only) pair for SetLinkDomains.
type ResolvedDomain struct {
	Domain    string // no leading "~"
	RouteOnly bool   // true: "~domain", routes queries but is not searched
}

// resolvedConfigurator configures DNS on the TUN link through
// systemd-resolved: the proxy as the link's server, the cluster's routing
// domains, no default route. A crash needs no repair: resolved forgets
// the link's settings when the TUN device goes away.
type resolvedConfigurator struct {
	bus       ResolvedBus
	linkIndex func(string) (int, error)
	log       *slog.Logger

	mu      sync.Mutex
	applied int // ifindex configured, 0 = none
}

func newResolvedConfigurator(bus ResolvedBus, linkIndex func(string) (int, error), log *slog.Logger) *resolvedConfigurator {
	return &resolvedConfigurator{bus: bus, linkIndex: linkIndex, log: log}
}

var _ OSConfigurator = (*resolvedConfigurator)(nil)

func (c *resolvedConfigurator) Mode() string { return "resolved" }

// Apply sets DNS server, domains and default route on cfg.Link; on a
// failure part way it reverts the link.
func (c *resolvedConfigurator) Apply(cfg OSConfig) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ip, err := netip.ParseAddr(cfg.Nameserver)
	if err != nil {
		return fmt.Errorf("resolved nameserver %q: %w", cfg.Nameserver, err)
	}
	if cfg.Link == "" {
		return errors.New("resolved: OSConfig.Link is required (the TUN interface)")
	}
	idx, err := c.linkIndex(cfg.Link)
	if err != nil {
		return fmt.Errorf("resolved: find link %q: %w", cfg.Link, err)
	}
	var domains []ResolvedDomain
	seen := map[string]bool{}
	add := func(d string, routeOnly bool) {
		d = strings.Trim(strings.TrimPrefix(d, "~"), ".")
		if d == "" || seen[d] {
			return
		}
		seen[d] = true
		domains = append(domains, ResolvedDomain{Domain: d, RouteOnly: routeOnly})
	}
	for _, d := range cfg.SearchDomains {
		add(d, false)
	}
	for _, d := range cfg.RoutingDomains {
		add(d, true)
	}
	c.applied = idx
	steps := []struct {
		what string
		do   func() error
	}{
		{"SetLinkDNS", func() error { return c.bus.SetLinkDNS(idx, []netip.Addr{ip}) }},
		{"SetLinkDomains", func() error { return c.bus.SetLinkDomains(idx, domains) }},
		{"SetLinkDefaultRoute", func() error { return c.bus.SetLinkDefaultRoute(idx, false) }},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			c.revertLocked()
			return fmt.Errorf("resolved %s on %s (index %d): %w", st.what, cfg.Link, idx, err)
		}
	}
	c.log.Info("configured systemd-resolved", "link", cfg.Link, "nameserver", ip.String(), "domains", fmt.Sprint(domains))
	return nil
}

// Restore reverts the link; a second call does nothing.
func (c *resolvedConfigurator) Restore() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.revertLocked()
}

func (c *resolvedConfigurator) revertLocked() error {
	if c.applied == 0 {
		return nil
	}
	idx := c.applied
	c.applied = 0
	if err := c.bus.RevertLink(idx); err != nil {
		return fmt.Errorf("resolved RevertLink %d: %w", idx, err)
	}
	return nil
}
