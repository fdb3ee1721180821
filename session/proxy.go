package session

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/bridgetun/bridgetun/proxy"
)

// proxyState is the netstack mode's SOCKS5 and HTTP proxy.
type proxyState struct {
	srv         *proxy.Server
	socks, http string
}

// startProxy serves SOCKS5 and HTTP proxies on loopback in netstack mode:
// programs reach cluster addresses through them, names resolved remotely by
// the split resolver. Loopback destinations are refused: through the tunnel
// they would be the gateway's own.
func (s *Session) startProxy() (*proxyState, error) {
	ns := s.client.Netstack()
	if ns == nil || (s.cfg.SOCKSAddr == "" && s.cfg.HTTPProxyAddr == "") {
		return nil, nil
	}
	dnsAddr := s.dns.listen
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsAddr)
	}}
	srv, err := proxy.New(proxy.Config{
		Dial: ns.DialContext,
		Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return resolver.LookupNetIP(ctx, "ip4", host)
		},
		Deny:       func(a netip.Addr) bool { return a.IsLoopback() || a.IsUnspecified() },
		Log:        s.cfg.Log,
		Registerer: s.cfg.Registerer,
	})
	if err != nil {
		return nil, err
	}
	st := &proxyState{srv: srv}
	if s.cfg.SOCKSAddr != "" {
		a, err := srv.ListenSOCKS(s.cfg.SOCKSAddr)
		if err != nil {
			_ = srv.Close()
			return nil, fmt.Errorf("--socks %s: %w", s.cfg.SOCKSAddr, err)
		}
		st.socks = a.String()
	}
	if s.cfg.HTTPProxyAddr != "" {
		a, err := srv.ListenHTTP(s.cfg.HTTPProxyAddr)
		if err != nil {
			_ = srv.Close()
			return nil, fmt.Errorf("--http-proxy %s: %w", s.cfg.HTTPProxyAddr, err)
		}
		st.http = a.String()
	}
	return st, nil
}

func (p *proxyState) stop() error {
	if p == nil {
		return nil
	}
	return p.srv.Close()
}
