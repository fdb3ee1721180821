package tunnel

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/bridgetun/bridgetun/internal/promreg"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

// Drop reasons for bridgetun_tunnel_dropped_packets_total.
const (
	dropMalformed   = "malformed"       // not a WireGuard message by type and size
	dropOversized   = "oversized_frame" // stream frame larger than the receive buffer
	dropUnknownPeer = "unknown_peer"    // handshake from a key this device does not know
	dropStreamDown  = "stream_down"     // sent while the stream was reconnecting
)

// metrics are the tunnel's Prometheus counters. A Device and the binds it
// uses may share one Registerer: newMetrics reuses collectors that are
// already registered there, so every part counts into the same series.
type metrics struct {
	rxBytes, txBytes     prometheus.Counter
	rxPackets, txPackets prometheus.Counter
	dropped              *prometheus.CounterVec
	reconnects           prometheus.Counter
}

// newMetrics builds the counters and registers them with reg; nil reg keeps
// them unregistered so callers never need nil checks.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "bridgetun_tunnel_" + name, Help: help})
	}
	m := &metrics{
		rxBytes:    counter("rx_bytes_total", "WireGuard datagram bytes received from the transport."),
		txBytes:    counter("tx_bytes_total", "WireGuard datagram bytes handed to the transport."),
		rxPackets:  counter("rx_packets_total", "WireGuard datagrams received from the transport."),
		txPackets:  counter("tx_packets_total", "WireGuard datagrams handed to the transport."),
		reconnects: counter("stream_reconnects_total", "Stream transport connections re-established after a break."),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_tunnel_dropped_packets_total",
			Help: "WireGuard datagrams dropped, by reason.",
		}, []string{"reason"}),
	}
	for _, r := range []string{dropMalformed, dropOversized, dropUnknownPeer, dropStreamDown} {
		m.dropped.WithLabelValues(r) // export zeros so dashboards see the series
	}
	if reg == nil {
		return m, nil
	}
	var err error
	for _, c := range []*prometheus.Counter{&m.rxBytes, &m.txBytes, &m.rxPackets, &m.txPackets, &m.reconnects} {
		*c, err = promreg.Register(reg, *c)
		if err != nil {
			return nil, err
		}
	}
	if m.dropped, err = promreg.Register(reg, m.dropped); err != nil {
		return nil, err
	}
	return m, nil
}

// mustMetrics is for constructors whose signature has no error: a metric
// clash there is a programming error in the caller's registry wiring.
func mustMetrics(reg prometheus.Registerer) *metrics {
	m, err := newMetrics(reg)
	if err != nil {
		panic(err)
	}
	return m
}

// WireGuard message types and sizes (wireguard-go device/noise-protocol.go).
const (
	msgInitiation       = 1
	msgResponse         = 2
	msgCookieReply      = 3
	msgTransport        = 4
	msgInitiationSize   = 148
	msgResponseSize     = 92
	msgCookieReplySize  = 64
	msgTransportMinSize = 32
)

// validMessage reports whether b has the type and size of a WireGuard
// message. It is a cheap filter run before wireguard-go sees the datagram;
// authentication stays wireguard-go's job.
func validMessage(b []byte) bool {
	if len(b) < 4 {
		return false
	}
	switch binary.LittleEndian.Uint32(b) {
	case msgInitiation:
		return len(b) == msgInitiationSize
	case msgResponse:
		return len(b) == msgResponseSize
	case msgCookieReply:
		return len(b) == msgCookieReplySize
	case msgTransport:
		return len(b) >= msgTransportMinSize
	}
	return false
}

// metricsBind wraps any conn.Bind so UDP and stream transports report the
// same rx/tx counters and drop malformed datagrams the same way.
type metricsBind struct {
	conn.Bind
	m     *metrics
	limit *inboundLimit // nil = unbounded

	mu     sync.Mutex
	closed chan struct{} // of the current Open, closed by Close
}

var _ conn.Bind = (*metricsBind)(nil)

func (b *metricsBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return nil, 0, err
	}
	closed := make(chan struct{})
	b.mu.Lock()
	b.closed = closed
	b.mu.Unlock()
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		wrapped[i] = b.receive(fn, closed)
	}
	return wrapped, actual, nil
}

// Close wakes receivers waiting on the inbound limit, then closes the bind.
func (b *metricsBind) Close() error {
	b.mu.Lock()
	if b.closed != nil {
		close(b.closed)
		b.closed = nil
	}
	b.mu.Unlock()
	return b.Bind.Close()
}

func (b *metricsBind) receive(fn conn.ReceiveFunc, closed <-chan struct{}) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		// Wait before reading, so the kernel keeps what we cannot hold.
		// (bufs cannot be shortened instead: StdNetBind reads into all
		// IdealBatchSize of its message slots whatever len(bufs) is.)
		if b.limit != nil && !b.limit.wait(closed) {
			return 0, net.ErrClosed
		}
		n, err := fn(bufs, sizes, eps)
		var pkts, bytes, bad, data int
		for i := range n {
			if sizes[i] == 0 {
				continue
			}
			if !validMessage(bufs[i][:sizes[i]]) {
				sizes[i] = 0 // wireguard-go skips zero-size entries
				bad++
				continue
			}
			pkts++
			bytes += sizes[i]
			if b.limit != nil && isData(bufs[i][:sizes[i]]) {
				data++
			}
		}
		if b.limit != nil {
			b.limit.received(data)
		}
		b.m.rxPackets.Add(float64(pkts))
		b.m.rxBytes.Add(float64(bytes))
		if bad > 0 {
			b.m.dropped.WithLabelValues(dropMalformed).Add(float64(bad))
		}
		return n, err
	}
}

func (b *metricsBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	err := b.Bind.Send(bufs, ep)
	if err == nil {
		var bytes int
		for _, p := range bufs {
			bytes += len(p)
		}
		b.m.txPackets.Add(float64(len(bufs)))
		b.m.txBytes.Add(float64(bytes))
	}
	return err
}

// newWGLogger adapts wireguard-go's printf logger to slog, and is the one
// place that turns wireguard-go's log lines into metrics: wireguard-go
// reports a handshake from an unknown key only as a verbose log line.
func newWGLogger(log *slog.Logger, m *metrics) *device.Logger {
	ctx := context.Background()
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if strings.HasPrefix(format, "Received invalid initiation message") ||
				strings.HasPrefix(format, "Received invalid response message") {
				m.dropped.WithLabelValues(dropUnknownPeer).Inc()
			}
			if log.Enabled(ctx, slog.LevelDebug) {
				log.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			if log.Enabled(ctx, slog.LevelError) {
				log.Error(fmt.Sprintf(format, args...))
			}
		},
	}
}

// discardLogger returns log, or a logger that drops everything when nil.
func discardLogger(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
