package dnsproxy

import (
	"strconv"
	"strings"
)

// Routes a query can take; also the "route" label of the metrics.
const (
	RouteCluster  = "cluster"  // through the tunnel to ClusterDNS
	RouteUpstream = "upstream" // to the machine's original resolvers
	routeLocal    = "local"    // answered by the proxy itself (malformed, own name)
)

// Route decides where name goes and, for the cluster, the FQDN to ask it:
//
//	frontend                      -> frontend.<ns>.svc.<domain>.  (if a Service in Namespace)
//	svc.ns                        -> svc.ns.svc.<domain>.         (if ns is a namespace)
//	svc.ns.svc                    -> svc.ns.svc.<domain>.
//	10-1-2-3.ns.pod               -> 10-1-2-3.ns.pod.<domain>.
//	anything.<domain>             -> itself
//
// Everything else is "upstream" with rewritten = the lower-cased FQDN.
func Route(name string, cfg Config) (route string, rewritten string) {
	return routeName(name, cfg.domain(), cfg)
}

func routeName(name, domain string, cfg Config) (string, string) {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	if n == "" {
		return RouteUpstream, "."
	}
	if n == domain || strings.HasSuffix(n, "."+domain) {
		return RouteCluster, n + "."
	}
	labels := strings.Split(n, ".")
	switch len(labels) {
	case 1:
		if cfg.Namespace != "" && cfg.Services != nil && cfg.Services.Has(n) {
			return RouteCluster, n + "." + strings.ToLower(cfg.Namespace) + ".svc." + domain + "."
		}
	case 2:
		if isNamespace(labels[1], cfg) {
			return RouteCluster, n + ".svc." + domain + "."
		}
	case 3:
		switch {
		case labels[2] == "svc":
			return RouteCluster, n + "." + domain + "."
		case labels[2] == "pod" && isDashedIP(labels[0]):
			return RouteCluster, n + "." + domain + "."
		}
	}
	return RouteUpstream, n + "."
}

func isNamespace(label string, cfg Config) bool {
	if cfg.Namespace != "" && strings.EqualFold(label, cfg.Namespace) {
		return true
	}
	return cfg.Namespaces != nil && cfg.Namespaces.Has(label)
}

// isDashedIP reports whether s is an IPv4 address written with dashes
// ("10-244-1-7"), the pod A record form.
func isDashedIP(s string) bool {
	parts := strings.Split(s, "-")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 || v > 255 || len(p) > 3 {
			return false
		}
	}
	return true
}
