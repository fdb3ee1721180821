package agent

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/internal/version"
	"github.com/bridgetun/bridgetun/tunnel"
)

// TunnelNetwork is where workstation tunnel addresses come from. It is a
// benchmarking range (RFC 2544) that real networks rarely route, unlike the
// CGNAT range that other VPNs already claim.
var TunnelNetwork = netip.MustParsePrefix("198.19.0.0/16")

// GatewayTunnelAddr is the gateway's own address in TunnelNetwork.
var GatewayTunnelAddr = netip.MustParseAddr("198.19.0.1")

// RegisterRequest asks the gateway to admit a workstation.
type RegisterRequest struct {
	PublicKey string `json:"public_key"` // base64 WireGuard public key
	Version   string `json:"version"`    // client version, for mismatch reports
}

// RegisterResponse tells a workstation how to join.
type RegisterResponse struct {
	Address          string `json:"address"`            // the workstation's tunnel address, /32
	GatewayPublicKey string `json:"gateway_public_key"` // base64
	GatewayAddress   string `json:"gateway_address"`    // the gateway's tunnel address (also its DNS listener)
	ClusterDNS       string `json:"cluster_dns"`        // the cluster resolver the gateway uses
	ClusterDomain    string `json:"cluster_domain"`
	Namespace        string `json:"namespace"`   // the gateway's namespace
	Version          string `json:"version"`     // gateway version
	TTLSeconds       int    `json:"ttl_seconds"` // register again within this
}

// Control is the gateway's control API. It listens on loopback inside the
// gateway pod, so only a Kubernetes port-forward (RBAC: pods/portforward)
// reaches it: the API server is the door, no extra authentication needed.
type Control struct {
	gw     peerAdmitter
	pub    tunnel.Key
	info   RegisterResponse
	ttl    time.Duration
	log    *slog.Logger
	now    func() time.Time
	mu     sync.Mutex
	leases map[tunnel.Key]*lease
	byAddr map[netip.Addr]tunnel.Key
	icpt   *Intercepts // nil = intercept endpoints answer 501
}

type lease struct {
	addr     netip.Addr
	lastSeen time.Time
}

// peerAdmitter is the part of the gateway the control API drives.
type peerAdmitter interface {
	AddPeer(tunnel.PeerConfig) error
	RemovePeer(tunnel.Key) error
	Status() ([]tunnel.PeerStatus, error)
}

// ControlConfig configures the control API.
type ControlConfig struct {
	Gateway       peerAdmitter
	GatewayKey    tunnel.Key // the gateway's private key
	ClusterDNS    string     // "" = unknown
	ClusterDomain string     // "" = cluster.local
	Namespace     string
	TTL           time.Duration         // 0 = 10 minutes: peers silent (no register, no handshake) this long are forgotten
	Registerer    prometheus.Registerer // bridgetun_gateway_peers; nil = none
	Log           *slog.Logger          // nil discards
	Now           func() time.Time
	Intercepts    *Intercepts // nil = no intercepts
}

// NewControl returns the control API handler.
func NewControl(cfg ControlConfig) *Control {
	c := &Control{
		gw:  cfg.Gateway,
		pub: cfg.GatewayKey.PublicKey(),
		ttl: cfg.TTL,
		log: cfg.Log,
		now: cfg.Now,
		info: RegisterResponse{
			GatewayPublicKey: cfg.GatewayKey.PublicKey().String(),
			GatewayAddress:   GatewayTunnelAddr.String(),
			ClusterDNS:       cfg.ClusterDNS,
			ClusterDomain:    cfg.ClusterDomain,
			Namespace:        cfg.Namespace,
			Version:          version.Version,
		},
		leases: map[tunnel.Key]*lease{},
		byAddr: map[netip.Addr]tunnel.Key{},
		icpt:   cfg.Intercepts,
	}
	if c.ttl == 0 {
		c.ttl = 10 * time.Minute
	}
	if c.info.ClusterDomain == "" {
		c.info.ClusterDomain = "cluster.local"
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.info.TTLSeconds = int(c.ttl / time.Second)
	if cfg.Registerer != nil {
		_ = cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bridgetun_gateway_peers",
			Help: "Workstations registered with this gateway and not yet expired.",
		}, func() float64 {
			c.mu.Lock()
			defer c.mu.Unlock()
			return float64(len(c.leases))
		}))
	}
	return c
}

// ServeHTTP serves POST /v1/register, GET /v1/info and the intercept
// endpoints (POST/DELETE/GET /v1/intercepts, POST /v1/intercepts/renew).
func (c *Control) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/v1/intercepts") {
		c.serveIntercepts(w, r)
		return
	}
	switch {
	case r.URL.Path == "/v1/register" && r.Method == http.MethodPost:
		var req RegisterRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			http.Error(w, "register: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		resp, err := c.Register(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	case r.URL.Path == "/v1/info" && r.Method == http.MethodGet:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(c.info)
	default:
		http.NotFound(w, r)
	}
}

// Register admits (or refreshes) a peer and returns its stable address.
func (c *Control) Register(req RegisterRequest) (RegisterResponse, error) {
	pub, err := tunnel.ParseKey(req.PublicKey)
	if err != nil {
		return RegisterResponse{}, fmt.Errorf("register: public_key: %w", err)
	}
	if pub == c.pub {
		return RegisterResponse{}, errors.New("register: public_key is the gateway's own key")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.leases[pub]
	if !ok {
		addr := c.pickAddr(pub)
		if err := c.gw.AddPeer(tunnel.PeerConfig{PublicKey: pub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(addr, 32)}}); err != nil {
			return RegisterResponse{}, fmt.Errorf("register: add peer: %w", err)
		}
		l = &lease{addr: addr}
		c.leases[pub], c.byAddr[addr] = l, pub
		c.log.Info("peer registered", "public_key", pub.String(), "addr", addr, "client_version", req.Version)
	}
	l.lastSeen = c.now()
	resp := c.info
	resp.Address = netip.PrefixFrom(l.addr, 32).String()
	return resp, nil
}

// pickAddr derives the address from the key, so a workstation keeps its
// address across reconnects and gateway restarts; collisions probe onward.
func (c *Control) pickAddr(pub tunnel.Key) netip.Addr {
	sum := sha256.Sum256(pub[:])
	base := TunnelNetwork.Addr().As4()
	hostBits := 32 - TunnelNetwork.Bits()
	size := uint32(1) << hostBits
	start := binary.BigEndian.Uint32(sum[:4]) % size
	netBase := binary.BigEndian.Uint32(base[:])
	for i := uint32(0); i < size; i++ {
		host := (start + i) % size
		if host < 2 || host == size-1 { // network, gateway (.0.1) and broadcast are never handed out
			continue
		}
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], netBase|host)
		a := netip.AddrFrom4(b)
		if _, taken := c.byAddr[a]; !taken {
			return a
		}
	}
	panic("tunnel network exhausted") // 65k peers on one gateway: not a real situation
}

// Expire forgets peers that neither registered nor completed a handshake within the TTL.
func (c *Control) Expire() {
	st, err := c.gw.Status()
	if err != nil {
		c.log.Warn("expire: status", "err", err)
		return
	}
	hs := map[tunnel.Key]time.Time{}
	for _, p := range st {
		hs[p.PublicKey] = p.LastHandshake
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for pub, l := range c.leases {
		seen := l.lastSeen
		if h := hs[pub]; h.After(seen) {
			seen = h
		}
		if now.Sub(seen) <= c.ttl {
			continue
		}
		if err := c.gw.RemovePeer(pub); err != nil {
			c.log.Warn("expire: remove peer", "public_key", pub.String(), "err", err)
			continue
		}
		delete(c.leases, pub)
		delete(c.byAddr, l.addr)
		if c.icpt != nil {
			c.icpt.RemovePeer(pub)
		}
		c.log.Info("peer expired", "public_key", pub.String(), "addr", l.addr)
	}
}

// Run serves the control API on ln and expires peers until ctx ends.
func (c *Control) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		t := time.NewTicker(c.ttl / 4)
		defer t.Stop()
		// Intercept leases are seconds long: check them every second.
		it := time.NewTicker(time.Second)
		defer it.Stop()
		for {
			select {
			case <-ctx.Done():
				_ = srv.Close()
				return
			case <-t.C:
				c.Expire()
			case <-it.C:
				if c.icpt != nil {
					if n := c.icpt.Expire(); n > 0 {
						c.log.Info("intercept leases expired", "count", n)
					}
				}
			}
		}
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("control API: %w", err)
	}
	return nil
}

// LeaveRequest drops a workstation's intercept of a Service.
type LeaveRequest struct {
	PublicKey string `json:"public_key"`
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
}

// LeaveResponse says whether anything was dropped and how many intercepts
// (anyone's) remain on the same workload: at 0 the caller restores it.
type LeaveResponse struct {
	Removed   bool `json:"removed"`
	Remaining int  `json:"remaining"`
}

// RenewRequest extends a workstation's intercept leases.
type RenewRequest struct {
	PublicKey string   `json:"public_key"`
	IDs       []string `json:"ids"`
}

// RenewResponse lists ids the gateway does not know (add them again).
type RenewResponse struct {
	Unknown    []string `json:"unknown,omitempty"`
	TTLSeconds int      `json:"ttl_seconds"`
}

func (c *Control) serveIntercepts(w http.ResponseWriter, r *http.Request) {
	if c.icpt == nil {
		http.Error(w, "intercepts are not enabled on this gateway", http.StatusNotImplemented)
		return
	}
	body := http.MaxBytesReader(w, r.Body, 16<<10)
	switch {
	case r.URL.Path == "/v1/intercepts" && r.Method == http.MethodGet:
		writeJSON(w, c.icpt.List(r.URL.Query().Get("namespace")))
	case r.URL.Path == "/v1/intercepts" && r.Method == http.MethodPost:
		var req InterceptRequest
		if err := json.NewDecoder(body).Decode(&req); err != nil {
			http.Error(w, "intercept: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		it, err := c.AddIntercept(req)
		switch {
		case errors.Is(err, ErrConflict):
			http.Error(w, err.Error(), http.StatusConflict)
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadRequest)
		default:
			writeJSON(w, it)
		}
	case r.URL.Path == "/v1/intercepts" && r.Method == http.MethodDelete:
		var req LeaveRequest
		if err := json.NewDecoder(body).Decode(&req); err != nil {
			http.Error(w, "leave: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		removed, remaining := c.icpt.Remove(req.PublicKey, req.Namespace, req.Service)
		if removed {
			c.log.Info("intercept left", "namespace", req.Namespace, "service", req.Service, "public_key", req.PublicKey, "remaining", remaining)
		}
		writeJSON(w, LeaveResponse{Removed: removed, Remaining: remaining})
	case r.URL.Path == "/v1/intercepts/renew" && r.Method == http.MethodPost:
		var req RenewRequest
		if err := json.NewDecoder(body).Decode(&req); err != nil {
			http.Error(w, "renew: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		c.touch(req.PublicKey)
		writeJSON(w, RenewResponse{Unknown: c.icpt.Renew(req.PublicKey, req.IDs), TTLSeconds: int(c.icpt.TTL() / time.Second)})
	default:
		http.NotFound(w, r)
	}
}

// AddIntercept records an intercept for a registered workstation.
func (c *Control) AddIntercept(req InterceptRequest) (Intercept, error) {
	pub, err := tunnel.ParseKey(req.PublicKey)
	if err != nil {
		return Intercept{}, fmt.Errorf("intercept: public_key: %w", err)
	}
	c.mu.Lock()
	l, ok := c.leases[pub]
	if ok {
		l.lastSeen = c.now()
	}
	c.mu.Unlock()
	if !ok {
		return Intercept{}, fmt.Errorf("intercept: %w: register first", ErrUnknownPeer)
	}
	it, err := c.icpt.Add(req, l.addr)
	if err != nil {
		return Intercept{}, err
	}
	c.log.Info("intercept", "namespace", req.Namespace, "service", req.Service, "workload", req.Workload.String(),
		"target", it.Target, "route_as", req.RouteAs, "holder", req.Holder)
	return it, nil
}

// touch counts a renewal as a sign of life for the peer's registration too.
func (c *Control) touch(pubKey string) {
	pub, err := tunnel.ParseKey(pubKey)
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.leases[pub]; ok {
		l.lastSeen = c.now()
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
