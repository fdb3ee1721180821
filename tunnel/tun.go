package tunnel

import (
	"log/slog"
	"net/netip"
)

// TUNConfig configures the kernel TUN used in root mode.
type TUNConfig struct {
	Name string       // "" = "bt0"
	MTU  int          // 0 = 1420
	Addr netip.Prefix // tunnel address, e.g. 100.64.0.2/32
	// Routes are sent into the tunnel. Each is checked against the main
	// table first: shadowing an existing route (the LAN, a VPN, the API
	// server's own network) would cut the machine off.
	Routes         []netip.Prefix
	AllowConflicts bool         // route a prefix even if it overlaps an existing route
	Log            *slog.Logger // nil discards
}

const (
	defaultTUNName = "bt0"
	defaultMTU     = 1420
)

func (c *TUNConfig) setDefaults() {
	if c.Name == "" {
		c.Name = defaultTUNName
	}
	if c.MTU == 0 {
		c.MTU = defaultMTU
	}
}
