package session

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/proxy"
)

// proxyConfig is what the loopback proxies need.
type proxyConfig struct {
	// Dial reaches cluster addresses (the netstack); nil = no proxies.
	Dial       func(ctx context.Context, network, addr string) (net.Conn, error)
	DNS        string                // host:port of the split resolver that names resolve through
	SOCKSAddr  string                // "" = no SOCKS5 proxy
	HTTPAddr   string                // "" = no HTTP proxy
	Log        *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil = no metrics
}

// proxyService is the netstack mode's SOCKS5 and HTTP proxies.
type proxyService struct {
	srv         *proxy.Server
	socks, http string
}

// startProxy serves SOCKS5 and HTTP proxies on loopback in netstack mode:
// programs reach cluster addresses through them, names resolved remotely by
// the split resolver. Loopback destinations are refused: through the tunnel
// they would be the gateway's own. It returns nil when none is asked for.
func startProxy(cfg proxyConfig) (*proxyService, error) {
	if cfg.Dial == nil || (cfg.SOCKSAddr == "" && cfg.HTTPAddr == "") {
		return nil, nil
	}
	dnsAddr := cfg.DNS
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsAddr)
	}}
	srv, err := proxy.New(proxy.Config{
		Dial: cfg.Dial,
		Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return resolver.LookupNetIP(ctx, "ip4", host)
		},
		Deny:       func(a netip.Addr) bool { return a.IsLoopback() || a.IsUnspecified() },
		Log:        cfg.Log,
		Registerer: cfg.Registerer,
	})
	if err != nil {
		return nil, err
	}
	p := &proxyService{srv: srv}
	if cfg.SOCKSAddr != "" {
		a, err := srv.ListenSOCKS(cfg.SOCKSAddr)
		if err != nil {
			_ = srv.Close()
			return nil, fmt.Errorf("--socks %s: %w", cfg.SOCKSAddr, err)
		}
		p.socks = a.String()
	}
	if cfg.HTTPAddr != "" {
		a, err := srv.ListenHTTP(cfg.HTTPAddr)
		if err != nil {
			_ = srv.Close()
			return nil, fmt.Errorf("--http-proxy %s: %w", cfg.HTTPAddr, err)
		}
		p.http = a.String()
	}
	return p, nil
}

// Run serves until ctx ends, then closes the proxies.
func (p *proxyService) Run(ctx context.Context) error {
	<-ctx.Done()
	return p.Close()
}

// Close stops the proxies; nil-safe.
func (p *proxyService) Close() error {
	if p == nil {
		return nil
	}
	return p.srv.Close()
}
