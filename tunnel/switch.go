package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"
	"github.com/bridgetun/bridgetun/internal/promreg"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/conn"
)

// Switching transport ("auto"): one WireGuard session carried over UDP
// while UDP works and over the stream while it does not. The crypto does
// not depend on the path, so a switch keeps the session: the gateway
// (agent's dual bind) roams to whichever path the last authenticated packet
// came from, as wireguard-go does for any peer.
//
// Both paths are open all the time (the stream is a hot standby) and both
// receive. Send uses the active one. The device runs the bind's monitor
// (switch_monitor.go), which moves to the stream when UDP goes unanswered
// and probes UDP with a handshake while on the stream.

// Transport names reported by SwitchBind.Active and in metric labels.
const (
	TransportUDP    = "udp"
	TransportStream = "stream"
)

const (
	pathUDP int32 = iota
	pathStream
)

var pathNames = [...]string{pathUDP: TransportUDP, pathStream: TransportStream}

// rekeyTimeout is wireguard-go's RekeyTimeout: it sends at most one
// handshake initiation per peer in this time, and an initiation older than
// this has been retransmitted anew.
const rekeyTimeout = 5 * time.Second

// SwitchBindConfig configures a SwitchBind.
type SwitchBindConfig struct {
	UDP    conn.Bind // the UDP path; nil = NewUDPBind()
	Stream conn.Bind // the stream path, normally a *StreamBind; required
	// FailAfter: on UDP, sending with nothing received from the gateway
	// for this long moves to the stream. 0 = 1.5s.
	FailAfter time.Duration
	// ProbeEvery is the wait before the first UDP probe once on the
	// stream; it doubles after each failed probe up to MaxProbeEvery.
	// 0 = 5s (wireguard-go sends at most one handshake per 5 s anyway).
	ProbeEvery    time.Duration
	MaxProbeEvery time.Duration // 0 = 30s
	// ProbeTimeout is how long a probe waits for the gateway's handshake
	// response over UDP. 0 = 1s.
	ProbeTimeout time.Duration
	// IdleCheck: on UDP with nothing received for this long, a handshake
	// checks the path, so a session that only receives (intercepts) still
	// notices UDP is gone. 0 = 15s.
	IdleCheck  time.Duration
	Log        *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil = no metrics
}

func (c *SwitchBindConfig) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.FailAfter, 1500*time.Millisecond)
	def(&c.ProbeEvery, 5*time.Second)
	def(&c.MaxProbeEvery, 30*time.Second)
	def(&c.ProbeTimeout, time.Second)
	def(&c.IdleCheck, 15*time.Second)
	c.MaxProbeEvery = max(c.MaxProbeEvery, c.ProbeEvery)
}

// SwitchBind is the client bind of the auto transport: a UDP path and a
// stream path under one WireGuard peer, sending over the active one.
type SwitchBind struct {
	cfg         SwitchBindConfig
	udp, stream conn.Bind
	log         *slog.Logger
	m           *switchMetrics
	epoch       time.Time // base of now(); monotonic
	ep          *switchEndpoint
	wake        chan struct{} // 1-buffered: a probe was answered

	active atomic.Int32 // pathUDP or pathStream
	// pending is when the first packet that wants an answer went out over
	// UDP after the gateway was last heard there; 0 = none outstanding.
	pending atomic.Int64
	// asked is set while the monitor's handshake for a pending packet is
	// out: then only its response clears pending. Data the gateway sends
	// after FailAfter/2 of silence proves only gateway→workstation: in a
	// one-way outage it is the gateway's TCP retransmitting (backing off
	// 0.2, 0.4, 0.8, 1.6 s …), and clearing on it kept the session on dead
	// UDP until a gap reached FailAfter (e2e: 4.6 s instead of ~2).
	asked atomic.Bool
	udpRx atomic.Int64 // the gateway last heard over UDP; 0 = never
	// probing routes handshake initiations over UDP while on the stream;
	// probeSent says one went, with sender index probeIndex; probeVia is
	// the path its response came back on (-1: none yet).
	probing, probeSent atomic.Bool
	probeIndex         atomic.Uint32
	probeVia           atomic.Int32
	switches           atomic.Int64

	mu         sync.Mutex
	udpEP      conn.Endpoint // the gateway's UDP endpoint; nil until configured
	udpAddr    string        // udpEP.DstToString()
	lastInit   []byte        // the last initiation sent over UDP, unanswered
	lastInitAt int64
}

var (
	_ conn.Bind     = (*SwitchBind)(nil)
	_ pathMonitor   = (*SwitchBind)(nil)
	_ conn.Endpoint = (*switchEndpoint)(nil)
)

// NewSwitchBind returns a closed bind, starting on UDP; wireguard-go opens
// it, and the Device it is given to runs its monitor.
func NewSwitchBind(cfg SwitchBindConfig) (*SwitchBind, error) {
	if cfg.Stream == nil {
		return nil, errors.New("new switch bind: Stream must be set")
	}
	if cfg.UDP == nil {
		cfg.UDP = NewUDPBind()
	}
	cfg.defaults()
	m, err := newSwitchMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("new switch bind: %w", err)
	}
	b := &SwitchBind{
		cfg: cfg, udp: cfg.UDP, stream: cfg.Stream, m: m, epoch: time.Now(),
		log:  obs.Component(discardLogger(cfg.Log), "switch_bind"),
		wake: make(chan struct{}, 1),
	}
	b.ep = &switchEndpoint{b: b}
	b.probeVia.Store(-1)
	m.setActive(pathUDP)
	return b, nil
}

// Active names the path packets go out on now: "udp" or "stream".
func (b *SwitchBind) Active() string { return pathNames[b.active.Load()] }

// Switches counts moves between the paths since the bind was made.
func (b *SwitchBind) Switches() int64 { return b.switches.Load() }

// now is the time since the bind was made, never 0.
func (b *SwitchBind) now() int64 { return int64(time.Since(b.epoch)) + 1 }

// Open opens both paths; the port applies to UDP.
func (b *SwitchBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	ufns, actual, err := b.udp.Open(port)
	if err != nil {
		return nil, 0, fmt.Errorf("open udp path: %w", err)
	}
	sfns, _, err := b.stream.Open(port)
	if err != nil {
		_ = b.udp.Close()
		return nil, 0, fmt.Errorf("open stream path: %w", err)
	}
	fns := make([]conn.ReceiveFunc, 0, len(ufns)+len(sfns))
	for _, f := range ufns {
		fns = append(fns, b.receive(pathUDP, f, b.udp.BatchSize()))
	}
	for _, f := range sfns {
		fns = append(fns, b.receive(pathStream, f, b.stream.BatchSize()))
	}
	return fns, actual, nil
}

// Close closes both paths; the bind can be reopened.
func (b *SwitchBind) Close() error {
	return errors.Join(b.udp.Close(), b.stream.Close())
}

// SetMark sets the mark on both paths.
func (b *SwitchBind) SetMark(mark uint32) error {
	return errors.Join(b.udp.SetMark(mark), b.stream.SetMark(mark))
}

// BatchSize is the larger of the two paths'; Send and receive cut batches
// to each path's own size.
func (b *SwitchBind) BatchSize() int { return max(b.udp.BatchSize(), b.stream.BatchSize(), 1) }

// ParseEndpoint takes the gateway's UDP "ip:port" and returns the one
// endpoint of this bind, which stands for whichever path is active.
func (b *SwitchBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ep, err := b.udp.ParseEndpoint(s)
	if err != nil {
		return nil, fmt.Errorf("parse endpoint: %w", err)
	}
	b.mu.Lock()
	b.udpEP, b.udpAddr = ep, ep.DstToString()
	b.mu.Unlock()
	return b.ep, nil
}

func (b *SwitchBind) gateway() (conn.Endpoint, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.udpEP, b.udpAddr
}

// Send writes bufs over the active path. While a probe is out, a handshake
// initiation (wireguard-go sends each alone) goes over UDP instead.
func (b *SwitchBind) Send(bufs [][]byte, _ conn.Endpoint) error {
	udpEP, _ := b.gateway()
	if udpEP == nil {
		return sendIn(b.stream, bufs, clientEndpoint{})
	}
	if b.active.Load() == pathStream {
		if !(b.probing.Load() && len(bufs) == 1 && isInitiation(bufs[0])) {
			return sendIn(b.stream, bufs, clientEndpoint{})
		}
		b.probeIndex.Store(binary.LittleEndian.Uint32(bufs[0][4:8]))
		b.probeSent.Store(true)
	} else {
		b.noteUDPSend(bufs)
	}
	return sendIn(b.udp, bufs, udpEP)
}

// noteUDPSend starts the unanswered clock for packets that want an answer
// (data and initiations, not keepalives) and keeps the last initiation, to
// resend it on the stream if UDP turns out dead before it is answered.
func (b *SwitchBind) noteUDPSend(bufs [][]byte) {
	wants := false
	for _, p := range bufs {
		if isInitiation(p) {
			b.mu.Lock()
			b.lastInit = append(b.lastInit[:0], p...)
			b.lastInitAt = b.now()
			b.mu.Unlock()
		}
		wants = wants || wantsAnswer(p)
	}
	if wants && b.pending.Load() == 0 {
		b.pending.CompareAndSwap(0, b.now())
	}
}

// takeInit returns a copy of the last unanswered initiation if
// wireguard-go has not retransmitted it yet, and forgets it.
func (b *SwitchBind) takeInit() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.lastInit
	b.lastInit = nil
	if p == nil || time.Duration(b.now()-b.lastInitAt) >= rekeyTimeout {
		return nil
	}
	return p
}

func (b *SwitchBind) forgetInit() {
	b.mu.Lock()
	b.lastInit = nil
	b.mu.Unlock()
}

// sendIn writes bufs to bind in batches it accepts.
func sendIn(bind conn.Bind, bufs [][]byte, ep conn.Endpoint) error {
	n := max(bind.BatchSize(), 1)
	for len(bufs) > 0 {
		k := min(len(bufs), n)
		if err := bind.Send(bufs[:k], ep); err != nil {
			return err
		}
		bufs = bufs[k:]
	}
	return nil
}

// receive wraps one path's ReceiveFunc: every packet comes from this
// bind's endpoint, and what arrives over UDP from the gateway is the
// health signal the monitor reads.
func (b *SwitchBind) receive(path int32, fn conn.ReceiveFunc, batch int) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		if len(bufs) > batch {
			bufs, sizes, eps = bufs[:batch], sizes[:batch], eps[:batch]
		}
		n, err := fn(bufs, sizes, eps)
		if n == 0 {
			return n, err
		}
		_, gw := b.gateway()
		heard, answered, probeAnswer := false, false, false
		probing := b.probing.Load() && b.probeSent.Load()
		for i := range n {
			if sizes[i] == 0 {
				continue
			}
			if path == pathUDP && eps[i] != nil && eps[i].DstToString() == gw {
				heard = true
			}
			if sizes[i] == msgResponseSize && isResponse(bufs[i][:sizes[i]]) {
				answered = true
				// A response names the initiation it answers by the
				// initiator's index (bytes 8-12).
				if probing && binary.LittleEndian.Uint32(bufs[i][8:12]) == b.probeIndex.Load() {
					probeAnswer = true
				}
			}
			eps[i] = b.ep
		}
		if answered {
			b.forgetInit()
			b.log.Debug("handshake response", "path", pathNames[path], "from_gateway", heard, "probing", b.probing.Load())
		}
		if heard {
			b.udpRx.Store(b.now())
			if b.active.Load() == pathUDP && (answered || !b.asked.Load()) {
				b.pending.Store(0)
			}
		}
		if probeAnswer {
			// Over UDP: both directions work. Over the stream: the gateway
			// heard the UDP probe but answered on the stream it had just
			// heard data on (it roams per packet); UDP out works, and the
			// way back is proven once on UDP, or the bind moves back.
			b.probeVia.CompareAndSwap(-1, path)
			select {
			case b.wake <- struct{}{}:
			default:
			}
		}
		return n, err
	}
}

// switchTo makes path the active one.
func (b *SwitchBind) switchTo(path int32, why string) {
	if b.active.Swap(path) == path {
		return
	}
	b.pending.Store(0)
	b.switches.Add(1)
	b.m.switches.WithLabelValues(pathNames[path]).Inc()
	b.m.setActive(path)
	_, gw := b.gateway()
	b.log.Info("transport switched", "to", pathNames[path], "udp_endpoint", gw, "reason", why)
}

func isInitiation(p []byte) bool {
	return len(p) == msgInitiationSize && validMessage(p) && p[0] == msgInitiation
}

func isResponse(p []byte) bool {
	return len(p) == msgResponseSize && validMessage(p) && p[0] == msgResponse
}

// wantsAnswer: a data packet or an initiation; a keepalive (an empty
// transport message) is never answered.
func wantsAnswer(p []byte) bool {
	return isInitiation(p) || (len(p) > msgTransportMinSize && p[0] == msgTransport)
}

// switchEndpoint is the SwitchBind's one endpoint. It names the gateway's
// UDP address whichever path is active (wireguard-tools parse it), and
// status reports the path.
type switchEndpoint struct{ b *SwitchBind }

func (e *switchEndpoint) ClearSrc() {
	if ep, _ := e.b.gateway(); ep != nil {
		ep.ClearSrc()
	}
}
func (e *switchEndpoint) SrcToString() string { return "" }
func (e *switchEndpoint) DstToString() string {
	if _, s := e.b.gateway(); s != "" {
		return s
	}
	return clientEndpoint{}.DstToString()
}
func (e *switchEndpoint) DstToBytes() []byte {
	if ep, _ := e.b.gateway(); ep != nil {
		return ep.DstToBytes()
	}
	return clientEndpoint{}.DstToBytes()
}
func (e *switchEndpoint) DstIP() netip.Addr {
	if ep, _ := e.b.gateway(); ep != nil {
		return ep.DstIP()
	}
	return netip.Addr{}
}
func (e *switchEndpoint) SrcIP() netip.Addr { return netip.Addr{} }

// switchMetrics count the switching bind's moves.
type switchMetrics struct {
	switches *prometheus.CounterVec
	active   *prometheus.GaugeVec
}

func newSwitchMetrics(reg prometheus.Registerer) (*switchMetrics, error) {
	m := &switchMetrics{
		switches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_tunnel_transport_switches_total",
			Help: "Moves of the auto transport between UDP and the stream, by the path moved to.",
		}, []string{"to"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridgetun_tunnel_transport_active",
			Help: "1 for the path the auto transport sends on now (udp or stream), 0 for the other.",
		}, []string{"transport"}),
	}
	for _, n := range pathNames {
		m.switches.WithLabelValues(n)
		m.active.WithLabelValues(n)
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.switches, err = promreg.Register(reg, m.switches); err != nil {
		return nil, err
	}
	if m.active, err = promreg.Register(reg, m.active); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *switchMetrics) setActive(path int32) {
	for i, n := range pathNames {
		v := 0.0
		if int32(i) == path {
			v = 1
		}
		m.active.WithLabelValues(n).Set(v)
	}
}
