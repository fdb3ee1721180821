package proxy

import (
	"github.com/bridgetun/bridgetun/internal/promreg"

	"github.com/prometheus/client_golang/prometheus"
)

// Values of the result label.
const (
	resultOK         = "ok"
	resultAuthFailed = "auth_failed"
	resultDenied     = "denied"
	resultUnresolved = "unresolved"
	resultDialFailed = "dial_failed"
	resultBadRequest = "bad_request"
)

// metrics are the proxy's Prometheus collectors (bridgetun_proxy_*).
type metrics struct {
	connections *prometheus.CounterVec // proto (socks_connect, socks_udp, http_connect, http), result
}

// newMetrics builds the collectors and registers them with reg; nil reg
// keeps them unregistered.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_proxy_connections_total",
			Help: "Proxy requests (SOCKS5 CONNECT/UDP ASSOCIATE, HTTP CONNECT/forward), by protocol and result.",
		}, []string{"proto", "result"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.connections, err = promreg.Register(reg, m.connections); err != nil {
		return nil, err
	}
	return m, nil
}

// count records one request of proto with result.
func (m *metrics) count(proto, result string) {
	m.connections.WithLabelValues(proto, result).Inc()
}
