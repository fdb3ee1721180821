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

	"github.com/bridgetun/bridgetun/agent/api"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/internal/version"
	"github.com/bridgetun/bridgetun/tunnel"
)

// Control is the gateway's control API. It listens on loopback inside the
// gateway pod, so only a Kubernetes port-forward (RBAC: pods/portforward)
// reaches it: the API server is the door, no extra authentication needed.
type Control struct {
	gw     peerAdmitter
	pub    tunnel.Key
	info   api.RegisterResponse
	ttl    time.Duration
	log    *slog.Logger
	now    func() time.Time
	mu     sync.Mutex // guards leases and byAddr
	leases map[tunnel.Key]*lease
	byAddr map[netip.Addr]tunnel.Key
	icpt   *Intercepts // nil = intercept endpoints answer 501
}

// maxPeers caps the workstations registered at once, so registrations
// cannot grow the gateway's peer table without bound; silent ones expire
// (TTL) and free their place. A variable so tests can lower it.
var maxPeers = 1024

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
		info: api.RegisterResponse{
			GatewayPublicKey: cfg.GatewayKey.PublicKey().String(),
			GatewayAddress:   api.GatewayTunnelAddr.String(),
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
		var req api.RegisterRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			http.Error(w, "register: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		resp, err := c.Register(req)
		if err != nil {
			http.Error(w, err.Error(), errStatus(err))
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
func (c *Control) Register(req api.RegisterRequest) (api.RegisterResponse, error) {
	pub, err := tunnel.ParseKey(req.PublicKey)
	if err != nil {
		return api.RegisterResponse{}, fmt.Errorf("register: public_key: %w", err)
	}
	if pub == c.pub {
		return api.RegisterResponse{}, errors.New("register: public_key is the gateway's own key")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.leases[pub]
	if !ok && len(c.leases) >= maxPeers {
		return api.RegisterResponse{}, fmt.Errorf("register: %w: the gateway already has %d workstations registered, its cap: a silent one expires after %s, retry then", ErrLimit, len(c.leases), c.ttl)
	}
	if !ok {
		addr := c.pickAddr(pub)
		if err := c.gw.AddPeer(tunnel.PeerConfig{PublicKey: pub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(addr, 32)}}); err != nil {
			return api.RegisterResponse{}, fmt.Errorf("register: add peer: %w", err)
		}
		l = &lease{addr: addr}
		c.leases[pub], c.byAddr[addr] = l, pub
		c.log.Info("peer registered", "public_key", pub.String(), "addr", addr, "client_version", req.Version)
	}
	l.lastSeen = c.now()
	resp := c.info
	resp.Address = netip.PrefixFrom(l.addr, 32).String()
	resp.Admitted = !ok
	return resp, nil
}

// pickAddr derives the address from the key, so a workstation keeps its
// address across reconnects and gateway restarts; collisions probe onward.
func (c *Control) pickAddr(pub tunnel.Key) netip.Addr {
	sum := sha256.Sum256(pub[:])
	base := api.TunnelNetwork.Addr().As4()
	hostBits := 32 - api.TunnelNetwork.Bits()
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

// Limits of the gateway's HTTP servers (control API and relay); tests
// shorten them.
var (
	readHeaderTimeout = 10 * time.Second // a request's header must arrive within this
	idleTimeout       = 2 * time.Minute  // a keep-alive connection without a request is closed after this
)

// Run serves the control API on ln and expires peers, route leases and
// grace holds until ctx ends; it returns after its goroutines exited.
func (c *Control) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: c, ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: idleTimeout}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
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
				c.expireIntercepts()
			}
		}
	}()
	err := srv.Serve(ln)
	cancel() // Serve failed on its own: stop the expiry loop too
	wg.Wait()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("control API: %w", err)
	}
	return nil
}

// expireIntercepts drops the routes whose lease ran out and ends the
// grace holds that ran out.
func (c *Control) expireIntercepts() {
	if c.icpt == nil {
		return
	}
	routes, holds := c.icpt.Expire()
	if routes > 0 {
		c.log.Info("intercept leases expired: routes dropped, workloads held for their grace", "count", routes)
	}
	if holds > 0 {
		c.log.Info("intercept grace ended: workloads go back to their original pod template", "count", holds)
	}
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
		var req api.InterceptRequest
		if err := json.NewDecoder(body).Decode(&req); err != nil {
			http.Error(w, "intercept: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		it, err := c.AddIntercept(req)
		switch {
		case errors.Is(err, ErrConflict):
			http.Error(w, err.Error(), http.StatusConflict)
		case errors.Is(err, ErrUnknownPeer):
			// Distinct from a bad request: the workstation registers
			// again and retries.
			http.Error(w, err.Error(), http.StatusPreconditionFailed)
		case errors.Is(err, ErrLimit):
			http.Error(w, err.Error(), http.StatusTooManyRequests)
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadRequest)
		default:
			writeJSON(w, it)
		}
	case r.URL.Path == "/v1/intercepts" && r.Method == http.MethodDelete:
		var req api.LeaveRequest
		if err := json.NewDecoder(body).Decode(&req); err != nil {
			http.Error(w, "leave: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		removed, remaining := c.icpt.Remove(req.PublicKey, req.Namespace, req.Service)
		if removed {
			c.log.Info("intercept left", "namespace", req.Namespace, "service", req.Service, "public_key", req.PublicKey, "remaining", remaining)
		}
		writeJSON(w, api.LeaveResponse{Removed: removed, Remaining: remaining})
	case r.URL.Path == "/v1/intercepts/renew" && r.Method == http.MethodPost:
		var req api.RenewRequest
		if err := json.NewDecoder(body).Decode(&req); err != nil {
			http.Error(w, "renew: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		known := c.touch(req.PublicKey)
		writeJSON(w, api.RenewResponse{Unknown: c.icpt.Renew(req.PublicKey, req.IDs), TTLSeconds: int(c.icpt.TTL() / time.Second), UnknownPeer: !known})
	default:
		http.NotFound(w, r)
	}
}

// AddIntercept records an intercept for a registered workstation.
func (c *Control) AddIntercept(req api.InterceptRequest) (api.Intercept, error) {
	pub, err := tunnel.ParseKey(req.PublicKey)
	if err != nil {
		return api.Intercept{}, fmt.Errorf("intercept: public_key: %w", err)
	}
	c.mu.Lock()
	l, ok := c.leases[pub]
	if ok {
		l.lastSeen = c.now()
	}
	c.mu.Unlock()
	if !ok {
		return api.Intercept{}, fmt.Errorf("intercept: %w: register first", ErrUnknownPeer)
	}
	it, err := c.icpt.Add(req, l.addr)
	if err != nil {
		return api.Intercept{}, err
	}
	c.log.Info("intercept", "namespace", req.Namespace, "service", req.Service, "workload", req.Workload.String(),
		"target", it.Target, "route_as", req.RouteAs, "holder", req.Holder)
	return it, nil
}

// touch counts a renewal as a sign of life for the peer's registration
// too; it reports whether the peer is registered.
func (c *Control) touch(pubKey string) bool {
	pub, err := tunnel.ParseKey(pubKey)
	if err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.leases[pub]
	if ok {
		l.lastSeen = c.now()
	}
	return ok
}

// errStatus is the HTTP status of a failed registration: 429 for a cap,
// else 400.
func errStatus(err error) int {
	if errors.Is(err, ErrLimit) {
		return http.StatusTooManyRequests
	}
	return http.StatusBadRequest
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
