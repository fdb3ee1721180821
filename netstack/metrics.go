package netstack

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus series. They are always created, so
// code never checks for nil; they are registered only when a Registerer is given.
type metrics struct {
	flowsActive *prometheus.GaugeVec   // {proto}
	flowsTotal  *prometheus.CounterVec // {proto}
	dialErrors  *prometheus.CounterVec // {proto}
	refused     *prometheus.CounterVec // {reason}
	icmpEcho    *prometheus.CounterVec // {result}
	linkDropped prometheus.CounterFunc
	tcpEvents   *eventsCollector
	endpointErr prometheus.Counter
	tcpGrowing  prometheus.Counter
}

// eventsCollector exports a few of gVisor's own TCP counters: the ones that
// explain a SYN that never became a flow.
type eventsCollector struct {
	desc *prometheus.Desc
	get  func() map[string]uint64
}

func (c *eventsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *eventsCollector) Collect(ch chan<- prometheus.Metric) {
	for ev, v := range c.get() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), ev)
	}
}

// newMetrics builds the gateway metrics and registers them with reg (nil: not
// registered). dropped reports the link endpoint's dropped packet count.
func newMetrics(reg prometheus.Registerer, dropped func() float64, tcpEvents func() map[string]uint64) (*metrics, error) {
	m := &metrics{
		tcpEvents: &eventsCollector{
			desc: prometheus.NewDesc("bridgetun_gateway_tcp_events_total",
				"gVisor TCP events that drop or refuse connections (SYNs dropped by the forwarder's in-flight bound, failed connection attempts, resets sent).",
				[]string{"event"}, nil),
			get: tcpEvents,
		},
		endpointErr: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridgetun_gateway_tcp_accept_errors_total", Help: "Forwarded TCP flows whose handshake with the peer could not be completed after the destination answered.",
		}),
		tcpGrowing: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridgetun_gateway_tcp_flows_growing_buffers_total",
			Help: "Forwarded TCP flows whose buffers may grow (workstations on the stream transport); the others keep fixed 1 MiB buffers.",
		}),
		flowsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridgetun_gateway_flows_active", Help: "Flows from peers currently relayed, by protocol.",
		}, []string{"proto"}),
		flowsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_gateway_flows_total", Help: "Flows from peers relayed since start, by protocol.",
		}, []string{"proto"}),
		dialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_gateway_dial_errors_total", Help: "Failed dials to a flow's real destination, by protocol.",
		}, []string{"proto"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_gateway_refused_total",
			Help: "New flows from peers the gateway refused (TCP RST, ICMP administratively prohibited), by reason: the destination policy's (metadata, kubelet, api-server, peer, outside-cluster) or local (loopback, link-local, multicast, the gateway's own addresses).",
		}, []string{"reason"}),
		icmpEcho: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_gateway_icmp_echo_total", Help: "ICMP echo requests for remote hosts, by result (replied, timeout, denied, dropped, error).",
		}, []string{"result"}),
		linkDropped: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "bridgetun_gateway_link_dropped_packets_total", Help: "Outbound packets dropped between gVisor and WireGuard (queue full or oversized).",
		}, dropped),
	}
	for _, p := range []string{"tcp", "udp"} {
		m.flowsActive.WithLabelValues(p)
		m.flowsTotal.WithLabelValues(p)
		m.dialErrors.WithLabelValues(p)
	}
	m.refused.WithLabelValues(ReasonLocal)
	if reg == nil {
		return m, nil
	}
	var done []prometheus.Collector
	for _, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			// Undo only our own registrations: Unregister matches by
			// descriptor, so it would remove another gateway's series too.
			for _, d := range done {
				reg.Unregister(d)
			}
			return nil, fmt.Errorf("register gateway metrics: %w", err)
		}
		done = append(done, c)
	}
	return m, nil
}

// unregister removes the metrics from reg so a closed gateway can be replaced.
func (m *metrics) unregister(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	for _, c := range m.collectors() {
		reg.Unregister(c)
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.flowsActive, m.flowsTotal, m.dialErrors, m.refused, m.icmpEcho, m.linkDropped, m.tcpEvents, m.endpointErr, m.tcpGrowing}
}
