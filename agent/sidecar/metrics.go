package sidecar

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/internal/promreg"
)

// Label values of the route label: who answered.
const (
	routeLocal   = "local"   // a workstation, through the gateway
	routeCluster = "cluster" // the original container
)

// Reasons a connection (or, in HTTP mode, a request) went to the original.
const (
	reasonNoRoute    = "no_route"
	reasonDialFailed = "dial_failed"
	reasonNotHTTP    = "not_http"
)

type metrics struct {
	connections *prometheus.CounterVec // route
	requests    *prometheus.CounterVec // route, route_as
	passthrough *prometheus.CounterVec // reason
	relayErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_intercept_connections_total",
			Help: "Redirected connections relayed whole (raw TCP) to a workstation (local) or the original container (cluster). HTTP-mode connections are counted per request in bridgetun_intercept_requests_total.",
		}, []string{"route"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_intercept_requests_total",
			Help: "HTTP requests proxied by an isolating sidecar, by who answered and the route-as header (a live route's value, \"\" when absent, \"other\" otherwise).",
		}, []string{"route", "route_as"}),
		passthrough: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_intercept_passthrough_total",
			Help: "Connections (HTTP mode: requests) sent to the original container instead of a workstation, by reason.",
		}, []string{"reason"}),
		relayErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridgetun_intercept_relay_errors_total",
			Help: "Relay dials to a workstation through the gateway that failed or timed out.",
		}),
	}
	for _, r := range []string{routeLocal, routeCluster} {
		m.connections.WithLabelValues(r)
	}
	for _, r := range []string{reasonNoRoute, reasonDialFailed, reasonNotHTTP} {
		m.passthrough.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.connections, err = promreg.Register(reg, m.connections); err != nil {
		return nil, err
	}
	if m.requests, err = promreg.Register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.passthrough, err = promreg.Register(reg, m.passthrough); err != nil {
		return nil, err
	}
	if m.relayErrors, err = promreg.Register(reg, m.relayErrors); err != nil {
		return nil, err
	}
	return m, nil
}
