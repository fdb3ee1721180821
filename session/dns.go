package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/dnsproxy"
)

// DNS modes for --dns.
const (
	DNSAuto = "auto" // split DNS: resolver on the tunnel address, OS pointed at it (TUN mode)
	DNSNone = "none" // resolver only, the OS untouched
)

// dnsState is what the split resolver changed, for status and shutdown.
type dnsState struct {
	server    *dnsproxy.Server
	os        dnsproxy.OSConfigurator
	listen    string
	upstreams []string
	search    []string
	routing   []string
}

func (d *dnsState) mode() string {
	if d == nil {
		return "off"
	}
	if d.os == nil {
		return DNSNone
	}
	return d.os.Mode()
}

// startDNS runs the split resolver. In TUN mode it listens on the tunnel
// address (port 53, as resolv.conf cannot name a port) and points the OS at
// it; in netstack mode, or with --dns none, it listens on loopback and
// changes nothing. The machine's resolvers are read before any change.
func (s *Session) startDNS(ctx context.Context) (*dnsState, error) {
	detect := dnsproxy.Detect{StateDir: s.cfg.Paths.StateDir}
	upstreams, origSearch, err := dnsproxy.ReadResolvConf("/etc/resolv.conf")
	if err != nil {
		s.log.Warn("read /etc/resolv.conf; foreign names will fail", "err", err)
	}
	services, namespaces := &dnsproxy.Services{}, &dnsproxy.Services{}
	go cluster.WatchServiceNames(ctx, s.conn.Client, s.conn.Namespace, services.Set, s.log)
	go cluster.WatchNamespaceNames(ctx, s.conn.Client, namespaces.Set, s.log)

	listen := "127.0.0.1:0"
	osMode := s.cfg.DNS
	if s.mode == client.ModeTUN && osMode != DNSNone {
		addr, err := netip.ParsePrefix(s.reg.Address)
		if err != nil {
			return nil, err
		}
		listen = net.JoinHostPort(addr.Addr().String(), "53")
	} else {
		osMode = DNSNone
	}
	var dial func(ctx context.Context, network, addr string) (net.Conn, error)
	if ns := s.client.Netstack(); ns != nil {
		dial = ns.DialContext
	}
	srv, err := dnsproxy.New(dnsproxy.Config{
		Listen:        []string{listen},
		ClusterDomain: s.reg.ClusterDomain,
		Namespace:     s.conn.Namespace,
		Namespaces:    namespaces,
		Services:      services,
		ClusterDNS:    []string{net.JoinHostPort(s.reg.GatewayAddress, "53")},
		Upstreams:     upstreams,
		ClusterDial:   dial,
		Log:           s.cfg.Log,
		Registerer:    s.cfg.Registerer,
	})
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	if err := srv.Start(ctx); err != nil {
		return nil, fmt.Errorf("dns: listen %s: %w", listen, err)
	}
	st := &dnsState{server: srv, upstreams: upstreams,
		search:  append(dnsproxy.SearchDomains(s.conn.Namespace, s.reg.ClusterDomain), origSearch...),
		routing: dnsproxy.RoutingDomains(s.reg.ClusterDomain)}
	if a := srv.Addrs(); len(a) > 0 {
		st.listen = a[0].String()
	}
	if osMode == DNSNone {
		return st, nil
	}
	conf, err := dnsproxy.NewOSConfigurator(detect, s.log)
	if err != nil {
		_ = srv.Close()
		return nil, err
	}
	ip, _, _ := net.SplitHostPort(st.listen)
	if err := conf.Apply(dnsproxy.OSConfig{Nameserver: ip, Link: s.tunName(), SearchDomains: dnsproxy.SearchDomains(s.conn.Namespace, s.reg.ClusterDomain), RoutingDomains: st.routing}); err != nil {
		_ = conf.Restore()
		_ = srv.Close()
		return nil, fmt.Errorf("dns: %w", err)
	}
	st.os = conf
	return st, nil
}

// stop restores the OS settings, then stops the resolver.
func (d *dnsState) stop() error {
	if d == nil {
		return nil
	}
	var errs []error
	if d.os != nil {
		errs = append(errs, d.os.Restore())
	}
	errs = append(errs, d.server.Close())
	return errors.Join(errs...)
}

// RepairDNS restores a resolv.conf that a crashed session left rewritten.
func RepairDNS(paths Paths) (bool, error) {
	return dnsproxy.RepairResolvConf(dnsproxy.Detect{StateDir: paths.StateDir})
}

// Repair undoes what a crashed session left (device, socket, resolv.conf)
// and says what it did. A running session is reported as *AlreadyUpError.
func Repair(paths Paths) ([]string, error) {
	repaired, err := paths.repairLeftovers(deleteLink)
	if err != nil {
		return repaired, err
	}
	ok, err := RepairDNS(paths)
	if ok {
		repaired = append(repaired, "restored /etc/resolv.conf")
	}
	return repaired, err
}
