package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/dnsproxy"
)

// DNS modes for --dns.
const (
	DNSAuto = "auto" // split DNS: resolver on loopback (resolv.conf) or the tunnel address (per-link DNS), OS pointed at it (TUN mode)
	DNSNone = "none" // resolver only, the OS untouched
)

// loopbackResolver is the split resolver's address with the resolv.conf
// backend (dnsConfig.LoopbackListen): a loopback address of its own, clear
// of local resolvers on 127.0.0.1 and systemd-resolved's 127.0.0.53.
const loopbackResolver = "127.0.0.153:53"

// dnsConfig is what the split resolver needs.
type dnsConfig struct {
	Client        kubernetes.Interface // watches Service and namespace names
	Namespace     string               // the connected namespace: bare names are its Services
	ClusterDomain string
	GatewayDNS    string // host:port of the gateway's in-tunnel resolver
	// Listen is the resolver's address: the tunnel address port 53 when
	// the OS is pointed at it (resolv.conf cannot name a port), else
	// loopback.
	Listen string
	// LoopbackListen, with ConfigureOS and the resolv.conf backend, is
	// where the resolver listens instead of Listen: resolv.conf names the
	// original nameservers after ours, and a dead resolver on loopback is
	// refused at once, so after a kill -9 glibc moves on to them without a
	// timeout per query (the tunnel address may be routed elsewhere once
	// the device is gone). If it is taken, Listen. "" = Listen.
	LoopbackListen string
	// ConfigureOS points the machine at the resolver (TUN mode, --dns auto).
	ConfigureOS bool
	Link        string // the TUN device, for per-link DNS backends
	// ClusterDial reaches the gateway's resolver; nil = the OS (TUN mode).
	ClusterDial func(ctx context.Context, network, addr string) (net.Conn, error)
	StateDir    string // resolv.conf backup and crash marker
	ResolvConf  string // the machine's resolver file; "" = /etc/resolv.conf
	// NewOS picks the OS backend; nil = dnsproxy.NewOSConfigurator.
	NewOS      func(dnsproxy.Detect, *slog.Logger) (dnsproxy.OSConfigurator, error)
	Log        *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil = no metrics
}

// dnsService is the split resolver: the server, the OS settings pointing at
// it, and the watches that tell it which bare names are Services.
type dnsService struct {
	cfg               dnsConfig
	server            *dnsproxy.Server
	os                dnsproxy.OSConfigurator // nil: the OS is untouched
	services, spaces  *dnsproxy.Services
	listen            string
	upstreams, search []string
	routing           []string
	closeOnce         sync.Once
	closeErr          error
}

// startDNS reads the machine's resolvers before any change, starts the
// resolver and, when asked, points the OS at it. On error nothing changed.
func startDNS(ctx context.Context, cfg dnsConfig) (*dnsService, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	if cfg.NewOS == nil {
		cfg.NewOS = dnsproxy.NewOSConfigurator
	}
	upstreams, origSearch, err := dnsproxy.ReadResolvConf(cfg.ResolvConf)
	if err != nil {
		cfg.Log.Warn("read the machine's resolvers; foreign names will fail", "file", cfg.ResolvConf, "err", err)
	}
	d := &dnsService{cfg: cfg, services: &dnsproxy.Services{}, spaces: &dnsproxy.Services{}, upstreams: upstreams,
		routing: dnsproxy.RoutingDomains(cfg.ClusterDomain)}
	d.search = append(dnsproxy.SearchDomains(cfg.Namespace, cfg.ClusterDomain), origSearch...)
	var conf dnsproxy.OSConfigurator
	if cfg.ConfigureOS {
		if conf, err = cfg.NewOS(dnsproxy.Detect{StateDir: cfg.StateDir}, cfg.Log); err != nil {
			return nil, err
		}
	}
	listen := cfg.Listen
	if conf != nil && conf.Mode() == "resolv.conf" && cfg.LoopbackListen != "" {
		listen = cfg.LoopbackListen
	}
	srv, err := d.startServer(ctx, listen)
	if err != nil && listen != cfg.Listen {
		cfg.Log.Warn("dns: loopback resolver address taken; using the tunnel address (a crashed session leaves foreign names slow until the next up)", "addr", listen, "err", err)
		srv, err = d.startServer(ctx, cfg.Listen)
	}
	if err != nil {
		if conf != nil {
			_ = conf.Restore()
		}
		return nil, err
	}
	d.server = srv
	if a := srv.Addrs(); len(a) > 0 {
		d.listen = a[0].String()
	}
	if conf == nil {
		return d, nil
	}
	ip, _, _ := net.SplitHostPort(d.listen)
	if err := conf.Apply(dnsproxy.OSConfig{Nameserver: ip, Link: cfg.Link, SearchDomains: dnsproxy.SearchDomains(cfg.Namespace, cfg.ClusterDomain), RoutingDomains: d.routing}); err != nil {
		_ = conf.Restore()
		_ = srv.Close()
		return nil, fmt.Errorf("dns: %w", err)
	}
	d.os = conf
	return d, nil
}

// startServer starts the resolver on listen.
func (d *dnsService) startServer(ctx context.Context, listen string) (*dnsproxy.Server, error) {
	cfg := d.cfg
	srv, err := dnsproxy.New(dnsproxy.Config{
		Listen:        []string{listen},
		ClusterDomain: cfg.ClusterDomain,
		Namespace:     cfg.Namespace,
		Namespaces:    d.spaces,
		Services:      d.services,
		ClusterDNS:    []string{cfg.GatewayDNS},
		Upstreams:     d.upstreams,
		ClusterDial:   cfg.ClusterDial,
		Log:           cfg.Log,
		Registerer:    cfg.Registerer,
	})
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	if err := srv.Start(ctx); err != nil {
		return nil, fmt.Errorf("dns: listen %s: %w", listen, err)
	}
	return srv, nil
}

// Run keeps the Service and namespace name watches going until ctx ends,
// then restores the OS settings and stops the resolver. It returns after
// both watches have exited.
func (d *dnsService) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		cluster.WatchServiceNames(ctx, d.cfg.Client, d.cfg.Namespace, d.services.Set, d.cfg.Log)
	}()
	go func() {
		defer wg.Done()
		cluster.WatchNamespaceNames(ctx, d.cfg.Client, d.spaces.Set, d.cfg.Log)
	}()
	<-ctx.Done()
	wg.Wait()
	return d.Close()
}

// Close restores the OS settings, then stops the resolver. Idempotent.
func (d *dnsService) Close() error {
	if d == nil {
		return nil
	}
	d.closeOnce.Do(func() {
		var errs []error
		if d.os != nil {
			if err := d.os.Restore(); err != nil {
				errs = append(errs, fmt.Errorf("restore DNS: %w", err))
			}
		}
		errs = append(errs, d.server.Close())
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// mode is what status shows: the OS backend, none, or off.
func (d *dnsService) mode() string {
	if d == nil {
		return "off"
	}
	if d.os == nil {
		return DNSNone
	}
	return d.os.Mode()
}

// RepairDNS restores a resolv.conf that a crashed session left rewritten.
func RepairDNS(paths Paths) (bool, error) {
	return dnsproxy.RepairResolvConf(dnsproxy.Detect{StateDir: paths.systemDir()})
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
