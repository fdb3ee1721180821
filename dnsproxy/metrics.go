package dnsproxy

import (
	"github.com/bridgetun/bridgetun/internal/promreg"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's Prometheus collectors (bridgetun_dns_*).
type metrics struct {
	queries          *prometheus.CounterVec   // route, rcode
	latency          *prometheus.HistogramVec // route
	cacheHits        *prometheus.CounterVec   // route
	upstreamFailures *prometheus.CounterVec   // route
}

// newMetrics builds the collectors and registers them with reg; nil reg
// keeps them unregistered. Collectors already registered there (two
// servers sharing a registry) are reused.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_dns_queries_total",
			Help: "DNS queries answered by the split resolver, by route and response code.",
		}, []string{"route", "rcode"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bridgetun_dns_query_duration_seconds",
			Help:    "Time from receiving a DNS query to writing its answer, by route.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route"}),
		cacheHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_dns_cache_hits_total",
			Help: "DNS queries answered from the cache, by route.",
		}, []string{"route"}),
		upstreamFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_dns_upstream_failures_total",
			Help: "Exchanges with a resolver that failed or timed out, by route.",
		}, []string{"route"}),
	}
	for _, r := range []string{RouteCluster, RouteUpstream} {
		m.cacheHits.WithLabelValues(r)
		m.upstreamFailures.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.queries, err = promreg.Register(reg, m.queries); err != nil {
		return nil, err
	}
	if m.latency, err = promreg.Register(reg, m.latency); err != nil {
		return nil, err
	}
	if m.cacheHits, err = promreg.Register(reg, m.cacheHits); err != nil {
		return nil, err
	}
	if m.upstreamFailures, err = promreg.Register(reg, m.upstreamFailures); err != nil {
		return nil, err
	}
	return m, nil
}
