package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"

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
	SOCKSAuth  ProxyCredentials      // zero = no authentication (RFC 1929 username/password otherwise)
	HTTPAuth   ProxyCredentials      // zero = no authentication (Proxy-Authorization: Basic otherwise)
	Log        *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil = no metrics
}

// ProxyCredentials are a loopback proxy's username and password; the zero
// value means none.
type ProxyCredentials struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// IsZero reports whether no credentials are set.
func (c ProxyCredentials) IsZero() bool { return c == ProxyCredentials{} }

// ProxyAuth is what the session's proxies require, as the socket API hands
// it to `bridgetun run` (never to what status prints).
type ProxyAuth struct {
	SOCKS ProxyCredentials `json:"socks,omitzero"`
	HTTP  ProxyCredentials `json:"http,omitzero"`
}

// Environment variables that hold proxy credentials, so they need not
// appear on a command line (ps shows those to every user).
const (
	SOCKSAuthEnv = "BRIDGETUN_SOCKS_AUTH"
	HTTPAuthEnv  = "BRIDGETUN_HTTP_PROXY_AUTH"
)

// ProxyCredentialsFrom parses flag's USER:PASS value, or with flag unset
// ("") the environment variable env's; neither gives none. The user may
// not hold a colon (HTTP Basic splits at the first one); each part is at
// most 255 bytes (RFC 1929).
func ProxyCredentialsFrom(name, flag, env string) (ProxyCredentials, error) {
	v, from := flag, "--"+name
	if v == "" {
		v, from = os.Getenv(env), "$"+env
	}
	if v == "" {
		return ProxyCredentials{}, nil
	}
	user, pass, ok := strings.Cut(v, ":")
	switch {
	case !ok || user == "" || pass == "":
		return ProxyCredentials{}, fmt.Errorf("%s: want USER:PASS, both non-empty", from)
	case len(user) > 255 || len(pass) > 255:
		return ProxyCredentials{}, fmt.Errorf("%s: user and password may have at most 255 bytes each", from)
	case strings.ContainsAny(v, "\r\n\x00"):
		return ProxyCredentials{}, fmt.Errorf("%s: no line breaks or NUL bytes in USER:PASS", from)
	}
	return ProxyCredentials{User: user, Password: pass}, nil
}

// proxyService is the netstack mode's SOCKS5 and HTTP proxies, one Server
// each (each has its own credentials).
type proxyService struct {
	socksSrv, httpSrv *proxy.Server // nil = not serving
	socks, http       string
	auth              ProxyAuth
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
	newServer := func(auth ProxyCredentials) (*proxy.Server, error) {
		return proxy.New(proxy.Config{
			Dial: cfg.Dial,
			Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
				return resolver.LookupNetIP(ctx, "ip4", host)
			},
			Deny:       func(a netip.Addr) bool { return a.IsLoopback() || a.IsUnspecified() },
			Username:   auth.User,
			Password:   auth.Password,
			Log:        cfg.Log,
			Registerer: cfg.Registerer,
		})
	}
	p := &proxyService{auth: ProxyAuth{SOCKS: cfg.SOCKSAuth, HTTP: cfg.HTTPAuth}}
	if cfg.SOCKSAddr != "" {
		srv, err := newServer(cfg.SOCKSAuth)
		if err != nil {
			return nil, err
		}
		p.socksSrv = srv
		a, err := srv.ListenSOCKS(cfg.SOCKSAddr)
		if err != nil {
			_ = p.Close()
			return nil, fmt.Errorf("--socks %s: %w", cfg.SOCKSAddr, err)
		}
		p.socks = a.String()
	}
	if cfg.HTTPAddr != "" {
		srv, err := newServer(cfg.HTTPAuth)
		if err != nil {
			_ = p.Close()
			return nil, err
		}
		p.httpSrv = srv
		a, err := srv.ListenHTTP(cfg.HTTPAddr)
		if err != nil {
			_ = p.Close()
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
	var errs []error
	for _, s := range []*proxy.Server{p.socksSrv, p.httpSrv} {
		if s != nil {
			errs = append(errs, s.Close())
		}
	}
	return errors.Join(errs...)
}

// Auth is what the proxies require (zero for a nil service).
func (p *proxyService) Auth() ProxyAuth {
	if p == nil {
		return ProxyAuth{}
	}
	return p.auth
}

// apiStatus is Status with the proxies' credentials, for the owner-only
// socket: `bridgetun run` puts them in the proxy URLs it exports, and the
// status command drops them before it prints.
func (s *Session) apiStatus() Status {
	st := s.Status()
	if a := s.proxy.Auth(); a != (ProxyAuth{}) {
		st.ProxyAuth = &a
	}
	return st
}
