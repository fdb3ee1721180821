package agent

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
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
	"github.com/bridgetun/bridgetun/internal/netlimit"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/internal/version"
	"github.com/bridgetun/bridgetun/tunnel"
)

// Control is the gateway's control API. It listens on loopback inside the
// gateway pod, so only a Kubernetes port-forward (RBAC: pods/portforward)
// reaches it. That door is shared by every developer of the namespace, so
// each call also carries the caller's own Kubernetes credential, verified
// with the API server (Authenticator): a registration belongs to the
// identity that proved it holds the key's private part, and only that
// identity may renew, end or replace the key's intercepts.
type Control struct {
	gw     peerAdmitter
	key    tunnel.Key // the gateway's private key: registration proofs
	pub    tunnel.Key
	auth   Authenticator
	authz  Authorizer
	wl     WorkloadPatcher // nil = workloads are not patched here
	info   api.RegisterResponse
	ttl    time.Duration
	log    *slog.Logger
	now    func() time.Time
	mu     sync.Mutex // guards leases and byAddr
	leases map[tunnel.Key]*lease
	byAddr map[netip.Addr]tunnel.Key
	icpt   *Intercepts // nil = intercept endpoints answer 501
	policy *Policy     // nil = registrations' destination grants are not recorded
	// holders maps tunnel addresses to owners for per-developer series; nil = none.
	holders *Holders
}

// maxPeers caps the workstations registered at once, so registrations
// cannot grow the gateway's peer table without bound; silent ones expire
// (TTL) and free their place. A variable so tests can lower it.
var maxPeers = 1024

// maxPeersPerIdentity caps the workstation keys one identity may have
// registered at once. A variable so tests can lower it.
var maxPeersPerIdentity = 16

type lease struct {
	addr     netip.Addr
	lastSeen time.Time
	owner    Identity
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
	Policy        *Policy     // records each registration's AlsoProxy/AllowAPIServer; nil = none
	// Auth verifies callers' credentials; nil = every call but GET
	// /v1/info is refused (401).
	Auth Authenticator
	// Authz checks a caller's own rights on a workload before an
	// intercept of it (and before --force); nil = refused.
	Authz Authorizer
	// Workloads patches and restores intercepted workloads on callers'
	// behalf; nil = this gateway only routes (the workloads are patched
	// by someone else: unit tests of the routing).
	Workloads WorkloadPatcher
	// Holders labels per-developer series; with a Registerer it also
	// exports the device's bytes and handshakes per holder. nil = none.
	Holders *Holders
}

// NewControl returns the control API handler.
func NewControl(cfg ControlConfig) *Control {
	c := &Control{
		gw:    cfg.Gateway,
		key:   cfg.GatewayKey,
		pub:   cfg.GatewayKey.PublicKey(),
		auth:  cfg.Auth,
		authz: cfg.Authz,
		wl:    cfg.Workloads,
		ttl:   cfg.TTL,
		log:   cfg.Log,
		now:   cfg.Now,
		info: api.RegisterResponse{
			GatewayPublicKey: cfg.GatewayKey.PublicKey().String(),
			GatewayAddress:   api.GatewayTunnelAddr.String(),
			ClusterDNS:       cfg.ClusterDNS,
			ClusterDomain:    cfg.ClusterDomain,
			Namespace:        cfg.Namespace,
			Version:          version.Version,
		},
		leases:  map[tunnel.Key]*lease{},
		byAddr:  map[netip.Addr]tunnel.Key{},
		icpt:    cfg.Intercepts,
		policy:  cfg.Policy,
		holders: cfg.Holders,
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
		if c.holders != nil {
			_ = cfg.Registerer.Register(holderCollector{h: c.holders, stats: c.peerStats, now: c.now})
		}
	}
	return c
}

// peerStats is the device's peer state and each registered peer's
// tunnel address, for the per-holder series.
func (c *Control) peerStats() ([]tunnel.PeerStatus, map[tunnel.Key]netip.Addr, error) {
	st, err := c.gw.Status()
	if err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	addrs := make(map[tunnel.Key]netip.Addr, len(c.leases))
	for k, l := range c.leases {
		addrs[k] = l.addr
	}
	return st, addrs, nil
}

// ServeHTTP serves GET /v1/info (no identity needed: it names the
// gateway's public key, for the registration proof), POST /v1/register and
// the intercept endpoints (POST/DELETE/GET /v1/intercepts, POST
// /v1/intercepts/renew, POST /v1/workloads/restore), each for a verified
// caller.
func (c *Control) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1/info" && r.Method == http.MethodGet {
		writeJSON(w, c.info)
		return
	}
	workloads := r.URL.Path == "/v1/workloads/restore"
	traces := r.URL.Path == "/v1/traces" || strings.HasPrefix(r.URL.Path, "/v1/traces/")
	if r.URL.Path != "/v1/register" && !strings.HasPrefix(r.URL.Path, "/v1/intercepts") && !workloads && !traces {
		http.NotFound(w, r)
		return
	}
	who, err := c.authenticate(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	if traces {
		c.serveTraces(w, r, who) // trace_http.go
		return
	}
	if strings.HasPrefix(r.URL.Path, "/v1/intercepts") || workloads {
		c.serveIntercepts(w, r, who)
		return
	}
	if r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	var req api.RegisterRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
		http.Error(w, "register: bad JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	resp, err := c.Register(who, req)
	if err != nil {
		http.Error(w, err.Error(), errStatus(err))
		return
	}
	writeJSON(w, resp)
}

// Caller is a verified caller of the control API: who the API server says
// it is, and the hash of the credential it proved that with (registration
// proofs are bound to it).
type Caller struct {
	Identity
	Binding []byte
}

// authenticate verifies the request's credential: a bearer token
// (TokenReview) or an identity CSR and its secret.
func (c *Control) authenticate(r *http.Request) (Caller, error) {
	if c.auth == nil {
		return Caller{}, errors.New("this gateway cannot verify callers (no authenticator): run `bridgetun install --upgrade`")
	}
	var (
		id     Identity
		err    error
		secret string
	)
	switch token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); {
	case ok && token != "":
		secret = token
		id, err = c.auth.AuthenticateToken(r.Context(), token, nil)
	case r.Header.Get(api.IdentityCSRHeader) != "":
		secret = r.Header.Get(api.IdentitySecretHeader)
		id, err = c.auth.AuthenticateCSR(r.Context(), r.Header.Get(api.IdentityCSRHeader), secret)
	default:
		return Caller{}, errors.New("no credential: every call to the gateway carries your Kubernetes identity (a bearer token, or an identity CSR): upgrade bridgetun")
	}
	if err == nil && !id.Valid() {
		err = errors.New("the API server named no user")
	}
	if err != nil {
		c.log.Info("caller refused", "err", err)
		return Caller{}, fmt.Errorf("your Kubernetes identity could not be verified by the gateway: %v (check `kubectl auth whoami`)", err)
	}
	sum := sha256.Sum256([]byte(secret))
	return Caller{Identity: id, Binding: sum[:]}, nil
}

// sameIdentity compares callers by user name, and by UID where both have one.
func sameIdentity(a, b Identity) bool {
	return a.User == b.User && (a.UID == "" || b.UID == "" || a.UID == b.UID)
}

// Register admits (or refreshes) a peer and returns its stable address. The
// caller must prove it holds the key's private part (req.Proof); a key
// belongs to the identity that registered it first until it expires.
func (c *Control) Register(who Caller, req api.RegisterRequest) (api.RegisterResponse, error) {
	pub, err := tunnel.ParseKey(req.PublicKey)
	if err != nil {
		return api.RegisterResponse{}, fmt.Errorf("register: public_key: %w", err)
	}
	if pub == c.pub {
		return api.RegisterResponse{}, errors.New("register: public_key is the gateway's own key")
	}
	proof, err := base64.StdEncoding.DecodeString(req.Proof)
	if err != nil || len(proof) == 0 {
		return api.RegisterResponse{}, fmt.Errorf("register: %w: no valid proof that you hold this key: upgrade bridgetun", ErrForbidden)
	}
	if err := tunnel.VerifyRegistrationProof(c.key, pub, who.Binding, proof); err != nil {
		return api.RegisterResponse{}, fmt.Errorf("register: %w: %v", ErrForbidden, err)
	}
	grant, err := ParseGrant(req)
	if err != nil {
		return api.RegisterResponse{}, fmt.Errorf("register: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.leases[pub]
	if ok && !sameIdentity(l.owner, who.Identity) {
		return api.RegisterResponse{}, fmt.Errorf("register: %w: this key is registered by %s", ErrForbidden, l.owner.User)
	}
	if !ok && len(c.leases) >= maxPeers {
		return api.RegisterResponse{}, fmt.Errorf("register: %w: the gateway already has %d workstations registered, its cap: a silent one expires after %s, retry then", ErrLimit, len(c.leases), c.ttl)
	}
	if !ok {
		if n := c.keysOfLocked(who.Identity); n >= maxPeersPerIdentity {
			return api.RegisterResponse{}, fmt.Errorf("register: %w: %s already has %d workstation keys registered, the most one identity may: a silent one expires after %s", ErrLimit, who.User, n, c.ttl)
		}
		addr := c.pickAddr(pub)
		if err := c.gw.AddPeer(tunnel.PeerConfig{PublicKey: pub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(addr, 32)}}); err != nil {
			return api.RegisterResponse{}, fmt.Errorf("register: add peer: %w", err)
		}
		l = &lease{addr: addr, owner: who.Identity}
		c.leases[pub], c.byAddr[addr] = l, pub
		c.log.Info("peer registered", "user", who.User, "public_key", pub.String(), "addr", addr, "client_version", req.Version)
	}
	l.lastSeen = c.now()
	c.holders.Set(l.addr, who.User)
	if c.policy != nil {
		c.policy.SetPeer(l.addr, grant) // every registration: the flags of this `up`
	}
	resp := c.info
	resp.Address = netip.PrefixFrom(l.addr, 32).String()
	resp.Admitted = !ok
	resp.User = who.User
	return resp, nil
}

// keysOfLocked counts the keys id has registered.
// addrsOf lists the tunnel addresses of id's registered keys.
func (c *Control) addrsOf(id Identity) []netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []netip.Addr
	for _, l := range c.leases {
		if sameIdentity(l.owner, id) {
			out = append(out, l.addr)
		}
	}
	return out
}

func (c *Control) keysOfLocked(id Identity) int {
	n := 0
	for _, l := range c.leases {
		if sameIdentity(l.owner, id) {
			n++
		}
	}
	return n
}

// ownKey resolves a key the caller names in an intercept call: it must be
// registered, by the caller. It counts the call as a sign of life.
func (c *Control) ownKey(who Caller, pubKey string) (tunnel.Key, *lease, error) {
	pub, err := tunnel.ParseKey(pubKey)
	if err != nil {
		return tunnel.Key{}, nil, fmt.Errorf("public_key: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.leases[pub]
	if !ok {
		return pub, nil, fmt.Errorf("%w: register first", ErrUnknownPeer)
	}
	if !sameIdentity(l.owner, who.Identity) {
		return pub, nil, fmt.Errorf("%w: that workstation key belongs to %s, not to you (%s)", ErrForbidden, l.owner.User, who.User)
	}
	l.lastSeen = c.now()
	return pub, l, nil
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
		if c.policy != nil {
			c.policy.RemovePeer(l.addr) // its --also-proxy/--allow-api-server grant goes with it
		}
		c.holders.Remove(l.addr)
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
	err := srv.Serve(netlimit.Listener(ln, netlimit.MaxControl, nil))
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

func (c *Control) serveIntercepts(w http.ResponseWriter, r *http.Request, who Caller) {
	if c.icpt == nil {
		http.Error(w, "intercepts are not enabled on this gateway", http.StatusNotImplemented)
		return
	}
	body := http.MaxBytesReader(w, r.Body, 16<<10)
	switch {
	case r.URL.Path == "/v1/intercepts" && r.Method == http.MethodGet:
		writeJSON(w, c.listFor(who, r.URL.Query().Get("namespace")))
	case r.URL.Path == "/v1/intercepts" && r.Method == http.MethodPost:
		var req api.InterceptRequest
		if err := json.NewDecoder(body).Decode(&req); err != nil {
			http.Error(w, "intercept: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		it, err := c.AddIntercept(r.Context(), who, req)
		if err != nil {
			http.Error(w, err.Error(), interceptStatus(err))
			return
		}
		writeJSON(w, it)
	case r.URL.Path == "/v1/intercepts" && r.Method == http.MethodDelete:
		var req api.LeaveRequest
		if err := json.NewDecoder(body).Decode(&req); err != nil {
			http.Error(w, "leave: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		if _, _, err := c.ownKey(who, req.PublicKey); err != nil {
			http.Error(w, "leave "+req.Namespace+"/"+req.Service+": "+err.Error(), interceptStatus(err))
			return
		}
		removed, remaining := c.icpt.Remove(req.PublicKey, req.Namespace, req.Service)
		if removed {
			c.log.Info("intercept left", "namespace", req.Namespace, "service", req.Service, "user", who.User, "remaining", remaining)
		}
		writeJSON(w, api.LeaveResponse{Removed: removed, Remaining: remaining})
	case r.URL.Path == "/v1/workloads/restore" && r.Method == http.MethodPost:
		var req api.RestoreRequest
		if err := json.NewDecoder(body).Decode(&req); err != nil {
			http.Error(w, "restore: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		rr, err := c.RestoreWorkload(r.Context(), who, req.Workload)
		if err != nil {
			http.Error(w, err.Error(), interceptStatus(err))
			return
		}
		writeJSON(w, rr)
	case r.URL.Path == "/v1/intercepts/renew" && r.Method == http.MethodPost:
		var req api.RenewRequest
		if err := json.NewDecoder(body).Decode(&req); err != nil {
			http.Error(w, "renew: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		_, _, err := c.ownKey(who, req.PublicKey)
		if err != nil && !errors.Is(err, ErrUnknownPeer) {
			http.Error(w, "renew: "+err.Error(), interceptStatus(err))
			return
		}
		// An unknown peer's ids are all unknown too (Renew matches
		// them by key): it registers again, then adds them.
		writeJSON(w, api.RenewResponse{Unknown: c.icpt.Renew(req.PublicKey, req.IDs), TTLSeconds: int(c.icpt.TTL() / time.Second), UnknownPeer: err != nil,
			Sidecars: c.icpt.SidecarsOf(req.PublicKey, req.IDs)})
	default:
		http.NotFound(w, r)
	}
}

// listFor lists a namespace's intercepts as the caller may see them: its
// own in full, everyone else's by holder name only (no key, no target).
func (c *Control) listFor(who Caller, ns string) []api.Intercept {
	mine := map[string]bool{}
	c.mu.Lock()
	for pub, l := range c.leases {
		if sameIdentity(l.owner, who.Identity) {
			mine[pub.String()] = true
		}
	}
	c.mu.Unlock()
	all := c.icpt.List(ns)
	for i := range all {
		if mine[all[i].PublicKey] {
			all[i].Mine = true
			continue
		}
		all[i].PublicKey, all[i].Target = "", ""
	}
	return all
}

// AddIntercept records an intercept for one of the caller's registered
// workstations. The caller must be allowed to update the workload (the
// gateway routes its traffic on the caller's behalf); with Force it may
// replace another identity's conflicting intercept, which it is then told
// in the log and the victim sees as lost.
//
// With a WorkloadPatcher the gateway finds the workload behind the Service
// port itself (the caller's Workload is replaced), checks the caller's
// right on that one, and patches it with its own ServiceAccount; a patch
// that fails drops a new intercept again, so nothing is left half-made.
func (c *Control) AddIntercept(ctx context.Context, who Caller, req api.InterceptRequest) (api.Intercept, error) {
	_, l, err := c.ownKey(who, req.PublicKey)
	if err != nil {
		return api.Intercept{}, fmt.Errorf("intercept %s/%s: %w", req.Namespace, req.Service, err)
	}
	if c.wl != nil {
		w, err := c.wl.Resolve(ctx, req.Namespace, req.Service, req.ServicePort)
		if err != nil {
			return api.Intercept{}, fmt.Errorf("%w: %w", ErrWorkload, err)
		}
		req.Workload = w
	}
	if err := c.mayIntercept(ctx, who, req.Workload); err != nil {
		return api.Intercept{}, fmt.Errorf("intercept %s/%s: %w", req.Namespace, req.Service, err)
	}
	if req.Force {
		if err := c.mayUpdate(ctx, who, req.Workload); err != nil {
			return api.Intercept{}, fmt.Errorf("intercept %s/%s: %w", req.Namespace, req.Service, err)
		}
	}
	req.Holder = who.User
	if req.Label != "" {
		req.Holder += " (" + req.Label + ")"
	}
	var it api.Intercept
	err = c.icpt.WithWorkloads(func() error {
		had := c.icpt.Has(req.PublicKey, req.Namespace, req.Service)
		var err error
		it, err = c.icpt.Add(req, l.addr)
		if errors.Is(err, ErrConflict) && req.Force {
			evicted := c.icpt.Evict(req)
			c.log.Warn("intercept replaced by force", "namespace", req.Namespace, "service", req.Service, "by", who.User, "evicted", evicted)
			it, err = c.icpt.Add(req, l.addr)
		}
		if err != nil || c.wl == nil {
			return err
		}
		it.Patched, err = c.wl.Patch(ctx, req.Namespace, req.Service, req.ServicePort, req.Workload, effectiveGrace(it.GraceSeconds), req.PublicKey)
		if err != nil {
			if !had {
				c.icpt.Remove(req.PublicKey, req.Namespace, req.Service)
			}
			return fmt.Errorf("%w: %w", ErrWorkload, err)
		}
		return nil
	})
	if err != nil {
		return api.Intercept{}, err
	}
	c.log.Info("intercept", "namespace", req.Namespace, "service", req.Service, "workload", req.Workload.String(),
		"target", it.Target, "route_as", req.RouteAs, "holder", req.Holder, "patched", it.Patched)
	return it, nil
}

// ErrWorkload: the gateway could not find or patch the workload (the
// message says why: admission refused the patched pod, the Service has no
// workload bridgetun can patch, …).
var ErrWorkload = errors.New("workload")

// RestoreWorkload puts w's original pod template back for a caller who may
// update it, unless an intercept at this gateway (anyone's, routed or held)
// still holds it.
func (c *Control) RestoreWorkload(ctx context.Context, who Caller, w api.Workload) (api.RestoreResponse, error) {
	if c.wl == nil {
		return api.RestoreResponse{}, fmt.Errorf("%w: this gateway does not patch workloads", ErrWorkload)
	}
	if err := c.mayIntercept(ctx, who, w); err != nil {
		return api.RestoreResponse{}, fmt.Errorf("restore %s: %w", w, err)
	}
	var rr api.RestoreResponse
	err := c.icpt.WithWorkloads(func() error {
		if n := c.icpt.OnWorkload(w); n > 0 {
			return fmt.Errorf("%w: %s stays patched: %d intercept(s) at the gateway hold it", ErrConflict, w, n)
		}
		var err error
		rr.Restored, err = c.wl.Restore(ctx, w)
		if err != nil {
			return fmt.Errorf("%w: restore %s: %w", ErrWorkload, w, err)
		}
		return nil
	})
	if err == nil && rr.Restored {
		c.log.Info("workload restored", "workload", w.String(), "by", who.User)
	}
	return rr, err
}

// workloadResources maps workload kinds to their API resource.
var workloadResources = map[string]string{"Deployment": "deployments", "StatefulSet": "statefulsets", "ReplicaSet": "replicasets"}

// mayIntercept asks the API server whether the caller may intercept the
// workload: the custom verb api.InterceptVerb on it (what `bridgetun
// install --print-rbac` grants: no right to edit the workload itself), or
// update (a developer with the built-in edit role).
func (c *Control) mayIntercept(ctx context.Context, who Caller, w api.Workload) error {
	for _, verb := range []string{api.InterceptVerb, "update"} {
		ok, err := c.allowed(ctx, who, verb, w)
		if err != nil || ok {
			return err
		}
	}
	return fmt.Errorf("%w: %s may not intercept %s %s/%s (it needs %q or \"update\" on %s: `bridgetun install --print-rbac` shows the Role to ask your admin for)", ErrForbidden, who.User, strings.ToLower(w.Kind), w.Namespace, w.Name, api.InterceptVerb, workloadResources[w.Kind])
}

// mayUpdate asks the API server whether the caller may update the
// workload itself: replacing a colleague's intercept (--force) needs it.
func (c *Control) mayUpdate(ctx context.Context, who Caller, w api.Workload) error {
	ok, err := c.allowed(ctx, who, "update", w)
	if err != nil || ok {
		return err
	}
	return fmt.Errorf("%w: %s may not update %s %s/%s (taking over an intercept with --force needs that right)", ErrForbidden, who.User, strings.ToLower(w.Kind), w.Namespace, w.Name)
}

// allowed is a SubjectAccessReview of the caller's verb on workload w.
func (c *Control) allowed(ctx context.Context, who Caller, verb string, w api.Workload) (bool, error) {
	res, ok := workloadResources[w.Kind]
	if !ok {
		return false, fmt.Errorf("workload kind %q: want Deployment, StatefulSet or ReplicaSet", w.Kind)
	}
	if c.authz == nil {
		return false, fmt.Errorf("%w: this gateway cannot check rights (no authorizer): run `bridgetun install --upgrade`", ErrForbidden)
	}
	ok, err := c.authz.Allowed(ctx, who.Identity, Access{Verb: verb, Group: "apps", Resource: res, Namespace: w.Namespace, Name: w.Name})
	if err != nil {
		return false, fmt.Errorf("check your rights on %s: %w", w, err)
	}
	return ok, nil
}

// interceptStatus is the HTTP status of a failed intercept call.
func interceptStatus(err error) int {
	switch {
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrUnknownPeer):
		// Distinct from a bad request: the workstation registers
		// again and retries.
		return http.StatusPreconditionFailed
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrLimit):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrWorkload):
		return http.StatusUnprocessableEntity
	}
	return http.StatusBadRequest
}

// errStatus is the HTTP status of a failed registration: 429 for a cap,
// 403 for a key that is not the caller's, else 400.
func errStatus(err error) int {
	switch {
	case errors.Is(err, ErrLimit):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	}
	return http.StatusBadRequest
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
