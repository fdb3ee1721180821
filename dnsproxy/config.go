// Package dnsproxy is bridgetun's split resolver: a miekg/dns server that
// sends cluster names through the tunnel to the cluster's DNS and every
// other name to the resolvers the machine had before `up`, plus the OS
// configurators (systemd-resolved, /etc/resolv.conf, none) that point the
// machine at it.
package dnsproxy

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Server. Only Listen and ClusterDomain are required.
type Config struct {
	Listen        []string // addresses to serve UDP+TCP on, e.g. "198.19.3.4:53" or "127.0.0.1:0"
	ClusterDomain string   // "cluster.local"; "" means "cluster.local"
	Namespace     string   // connected namespace: bare names and "<svc>" expansion; "" disables bare names
	// Namespaces reports which names are namespaces, so that "<svc>.<ns>"
	// goes to the cluster while "example.com" does not. nil = only Namespace.
	Namespaces ServiceSet
	ClusterDNS []string   // "ip:port" of the cluster's resolvers reached through the tunnel, e.g. "10.96.0.10:53"
	Upstreams  []string   // "ip:port" of the machine's original resolvers; empty = SERVFAIL for foreign names
	Services   ServiceSet // which bare single-label names are Services in Namespace; nil = none
	// ClusterDial reaches ClusterDNS over "udp" and "tcp" (netstack mode
	// dials through the tunnel); nil = net.Dialer.
	ClusterDial     func(ctx context.Context, network, addr string) (net.Conn, error)
	ClusterIPv6     bool                  // false: AAAA for cluster names gets NODATA without asking the cluster
	UpstreamTimeout time.Duration         // 0 = 2s: a query nobody answered in time gets SERVFAIL
	CacheSize       int                   // entries; 0 = 10000, negative disables the cache
	Log             *slog.Logger          // nil discards
	Registerer      prometheus.Registerer // nil keeps metrics unregistered
}

// ServiceSet answers whether a single label names something that exists
// in the cluster (a Service in the connected namespace, or a namespace).
type ServiceSet interface {
	// Has reports whether name (lower case, no dots) is in the set.
	Has(name string) bool
}

// Services is a concurrency-safe ServiceSet the caller keeps up to date
// from a watch. The zero value is empty and ready to use.
type Services struct {
	names atomic.Pointer[map[string]struct{}]
}

// NewStaticServices returns a set holding names.
func NewStaticServices(names ...string) *Services {
	s := &Services{}
	s.Set(names)
	return s
}

// Set replaces the whole set.
func (s *Services) Set(names []string) {
	m := make(map[string]struct{}, len(names))
	for _, n := range names {
		m[strings.ToLower(strings.TrimSuffix(n, "."))] = struct{}{}
	}
	s.names.Store(&m)
}

// Has implements ServiceSet.
func (s *Services) Has(name string) bool {
	if s == nil {
		return false
	}
	m := s.names.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[name]
	return ok
}

// Names returns the set's members, sorted.
func (s *Services) Names() []string {
	m := s.names.Load()
	if m == nil {
		return nil
	}
	out := make([]string, 0, len(*m))
	for n := range *m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// SearchDomains is the search list bridgetun puts first on the machine
// for namespace ns: "<ns>.svc.<domain> svc.<domain> <domain>".
func SearchDomains(ns, domain string) []string {
	domain = strings.Trim(domain, ".")
	if domain == "" {
		domain = defaultClusterDomain
	}
	var out []string
	if ns != "" {
		out = append(out, ns+".svc."+domain)
	}
	return append(out, "svc."+domain, domain)
}

// RoutingDomains are the DNS routing domains (systemd-resolved "~domain")
// that must reach the proxy: the cluster domain and the pseudo-TLDs
// "svc" and "pod" used by the short forms.
func RoutingDomains(domain string) []string {
	domain = strings.Trim(domain, ".")
	if domain == "" {
		domain = defaultClusterDomain
	}
	return []string{domain, "svc", "pod"}
}

const (
	defaultClusterDomain   = "cluster.local"
	defaultUpstreamTimeout = 2 * time.Second
	defaultCacheSize       = 10000
)

func (c Config) domain() string {
	d := strings.ToLower(strings.Trim(c.ClusterDomain, "."))
	if d == "" {
		return defaultClusterDomain
	}
	return d
}
