package agent

import (
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/tunnel"
)

// maxHolderLabels bounds the holder label's values on one gateway: the
// first this many developers get their own series, later ones share
// "other", so a busy gateway cannot grow its series without bound. A
// variable so tests can lower it.
var maxHolderLabels = 64

// Label values for peers without a known owner and beyond the cap.
const (
	holderUnknown = "unknown"
	holderOther   = "other"
)

// Holders gives the gateway's series per developer: a peer's tunnel
// address maps to its owner's verified Kubernetes user name (the
// registration's identity), the holder label of bytes, handshake age,
// flows and relayed connections. A team's dashboard tells developers
// apart; keys and addresses never become labels.
type Holders struct {
	mu     sync.Mutex
	byAddr map[netip.Addr]string // tunnel address → user
	labels map[string]bool       // users with their own label value
	flows  *prometheus.CounterVec
	relay  *prometheus.CounterVec
}

// NewHolders registers the per-holder counters with reg (nil = none).
func NewHolders(reg prometheus.Registerer) *Holders {
	h := &Holders{
		byAddr: map[netip.Addr]string{},
		labels: map[string]bool{},
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_gateway_holder_flows_total",
			Help: "New flows the destination policy admitted from a developer's workstations, by holder (verified user name) and protocol.",
		}, []string{"holder", "proto"}),
		relay: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridgetun_gateway_holder_relay_total",
			Help: "Sidecar connections relayed to a developer's intercepts, by holder and result (hit: delivered, miss: the workstation did not answer).",
		}, []string{"holder", "result"}),
	}
	if reg != nil {
		_ = reg.Register(h.flows)
		_ = reg.Register(h.relay)
	}
	return h
}

// Set records that the peer at addr belongs to user.
func (h *Holders) Set(addr netip.Addr, user string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.byAddr[addr.Unmap()] = user
	if !h.labels[user] && len(h.labels) < maxHolderLabels {
		h.labels[user] = true // the first developers to register keep their own series
	}
	h.mu.Unlock()
}

// Remove forgets the peer at addr (it expired).
func (h *Holders) Remove(addr netip.Addr) {
	if h == nil {
		return
	}
	h.mu.Lock()
	delete(h.byAddr, addr.Unmap())
	h.mu.Unlock()
}

// Of is the holder label of the peer at addr: its owner's name, "other"
// past the cap, "unknown" for an address nobody registered.
func (h *Holders) Of(addr netip.Addr) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	user, ok := h.byAddr[addr.Unmap()]
	switch {
	case !ok:
		return holderUnknown
	case h.labels[user]:
		return user
	}
	return holderOther
}

// Flow counts an admitted flow from src.
func (h *Holders) Flow(src netip.Addr, proto string) {
	if h == nil {
		return
	}
	h.flows.WithLabelValues(h.Of(src), proto).Inc()
}

// Relayed counts a sidecar connection to target (addr:port in a
// workstation's tunnel address) as a hit or a miss.
func (h *Holders) Relayed(target string, hit bool) {
	if h == nil {
		return
	}
	ap, err := netip.ParseAddrPort(target)
	holder := holderUnknown
	if err == nil {
		holder = h.Of(ap.Addr())
	}
	result := "hit"
	if !hit {
		result = "miss"
	}
	h.relay.WithLabelValues(holder, result).Inc()
}

// peerStats is what the holder collector reads from the gateway at scrape
// time: every peer's state, and each peer's tunnel address.
type peerStats func() ([]tunnel.PeerStatus, map[tunnel.Key]netip.Addr, error)

// holderCollector exports the WireGuard device's per-peer counters summed
// per holder: bytes each way, peers, and the age of the youngest
// handshake. Read at scrape time, so nothing is kept per peer here.
type holderCollector struct {
	h     *Holders
	stats peerStats
	now   func() time.Time
}

var (
	holderBytesDesc = prometheus.NewDesc("bridgetun_gateway_holder_bytes_total",
		"Tunnel bytes of a developer's registered workstations, by holder and direction (rx: from the workstation, tx: to it); a peer that expires takes its bytes with it.",
		[]string{"holder", "direction"}, nil)
	holderPeersDesc = prometheus.NewDesc("bridgetun_gateway_holder_peers",
		"Registered workstations per holder.", []string{"holder"}, nil)
	holderHandshakeDesc = prometheus.NewDesc("bridgetun_gateway_holder_handshake_age_seconds",
		"Seconds since the youngest WireGuard handshake among a holder's workstations (absent: none yet).", []string{"holder"}, nil)
)

func (c holderCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- holderBytesDesc
	ch <- holderPeersDesc
	ch <- holderHandshakeDesc
}

func (c holderCollector) Collect(ch chan<- prometheus.Metric) {
	peers, addrs, err := c.stats()
	if err != nil {
		return
	}
	type sums struct {
		rx, tx float64
		n      int
		last   time.Time
	}
	by := map[string]*sums{}
	for _, p := range peers {
		addr, ok := addrs[p.PublicKey]
		if !ok {
			continue // not registered through the control API (static peers)
		}
		holder := c.h.Of(addr)
		s := by[holder]
		if s == nil {
			s = &sums{}
			by[holder] = s
		}
		s.rx += float64(p.RxBytes)
		s.tx += float64(p.TxBytes)
		s.n++
		if p.LastHandshake.After(s.last) {
			s.last = p.LastHandshake
		}
	}
	now := c.now()
	for holder, s := range by {
		ch <- prometheus.MustNewConstMetric(holderBytesDesc, prometheus.CounterValue, s.rx, holder, "rx")
		ch <- prometheus.MustNewConstMetric(holderBytesDesc, prometheus.CounterValue, s.tx, holder, "tx")
		ch <- prometheus.MustNewConstMetric(holderPeersDesc, prometheus.GaugeValue, float64(s.n), holder)
		if !s.last.IsZero() {
			ch <- prometheus.MustNewConstMetric(holderHandshakeDesc, prometheus.GaugeValue, now.Sub(s.last).Seconds(), holder)
		}
	}
}
