package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/tunnel"
)

// ErrConflict is returned when someone else holds the Service in a way
// that excludes the request.
var ErrConflict = errors.New("intercept conflict")

// ErrUnknownPeer is returned for a key that is not registered.
var ErrUnknownPeer = errors.New("workstation not registered")

// ErrLimit is returned when a registration or an intercept would pass the
// gateway's caps (maxPeers, maxInterceptsPerKey).
var ErrLimit = errors.New("limit reached")

// maxInterceptsPerKey caps the intercepts (routed or held) one workstation
// key may hold, so one client cannot fill the gateway's table; a re-add of
// its own intercept does not count. A variable so tests can lower it.
var maxInterceptsPerKey = 32

// Intercepts is the gateway's table of intercepts. Each has two lifetimes:
// its route lease (TTL, seconds: the workstation renews it every few
// seconds; when it runs out the route is dropped, so the sidecars pass
// traffic through to the original container) and its grace hold (the
// workload stays patched until the last renewal plus the intercept's grace,
// so a workstation back from sleep re-attaches without a rollout). A
// workload goes to the orphan restorer only when no intercept on it has a
// lease or a hold left.
type Intercepts struct {
	ttl     time.Duration
	now     func() time.Time
	mu      sync.Mutex
	byID    map[string]*entry
	version uint64
	changed chan struct{}  // closed and replaced on every route change
	expired []api.Workload // workloads whose last intercept and hold ended, for the restorer
	kick    chan struct{}  // signals the restorer
	// patching serialises changes of workloads (patch, restore) with
	// the table checks they depend on (WithWorkloads).
	patching sync.Mutex
	traces   *Traces       // header-propagation traces (trace.go), sharing the route polls' wake-ups
	seen     *SidecarsSeen // which sidecar pods poll for which Service (sidecarseen.go)
}

// WithWorkloads runs fn while no other caller patches or restores a
// workload: a restore that found a workload unheld cannot undo an
// intercept added (and found patched) meanwhile.
func (t *Intercepts) WithWorkloads(fn func() error) error {
	t.patching.Lock()
	defer t.patching.Unlock()
	return fn()
}

// Has reports whether the workstation pub has an intercept (routed or
// held) of ns/svc.
func (t *Intercepts) Has(pub, ns, svc string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.byID[interceptID(pub, ns, svc)]
	return ok
}

// entry is one intercept: routed while heldUntil is zero, else held.
type entry struct {
	it        api.Intercept
	renewed   time.Time // the last add or renewal
	grace     time.Duration
	heldUntil time.Time // zero = the route lease is live
}

func (e *entry) live() bool { return e.heldUntil.IsZero() }

// view is the intercept as List shows it.
func (e *entry) view() api.Intercept {
	it := e.it
	it.Held, it.HeldUntil = !e.live(), e.heldUntil
	return it
}

// NewIntercepts returns an empty table; ttl 0 = 15 s; now nil = time.Now.
func NewIntercepts(ttl time.Duration, now func() time.Time) *Intercepts {
	if ttl == 0 {
		ttl = 15 * time.Second
	}
	if now == nil {
		now = time.Now
	}
	// Version starts at 1 so a sidecar's first poll (after=0) answers at once.
	t := &Intercepts{ttl: ttl, now: now, version: 1, byID: map[string]*entry{}, changed: make(chan struct{}), kick: make(chan struct{}, 1)}
	t.traces = newTraces(now, t.wakePolls)
	t.seen = newSidecarsSeen(now)
	return t
}

// Sidecars is the record of the sidecars polling the relay.
func (t *Intercepts) Sidecars() *SidecarsSeen { return t.seen }

// SidecarsOf answers, for each of ids that pub holds, the sidecar pods
// polling for its Service (an empty list when none does).
func (t *Intercepts) SidecarsOf(pub string, ids []string) map[string][]string {
	type where struct{ id, ns, svc string }
	var ws []where
	t.mu.Lock()
	for _, id := range ids {
		if e, ok := t.byID[id]; ok && e.it.PublicKey == pub {
			ws = append(ws, where{id, e.it.Namespace, e.it.Service})
		}
	}
	t.mu.Unlock()
	out := make(map[string][]string, len(ws))
	for _, w := range ws {
		out[w.id] = append([]string{}, t.seen.Of(w.ns, w.svc)...)
	}
	return out
}

// TTL is the route lease length.
func (t *Intercepts) TTL() time.Duration { return t.ttl }

// interceptID is stable per workstation and Service, so a re-add replaces.
func interceptID(pub, ns, svc string) string {
	h := sha256.Sum256([]byte(pub + "\x00" + ns + "\x00" + svc))
	return hex.EncodeToString(h[:6])
}

// effectiveGrace is GraceSeconds with the default and the cap applied.
func effectiveGrace(seconds int) time.Duration {
	if seconds == 0 {
		return api.DefaultGrace
	}
	return min(time.Duration(seconds)*time.Second, api.MaxGrace)
}

// Add records an intercept for the peer at addr, or refreshes the peer's own
// one for the same Service (a held one gets its route back: the re-add
// within the grace cancels the pending restore). A full intercept excludes
// every other holder's intercept of the Service and the other way round;
// two isolated ones must use different route-as values. Held intercepts
// count: their workstation is away, not gone.
func (t *Intercepts) Add(req api.InterceptRequest, addr netip.Addr) (api.Intercept, error) {
	switch {
	case req.Namespace == "" || req.Service == "":
		return api.Intercept{}, errors.New("intercept: namespace and service are required")
	case req.Port < 1 || req.Port > 65535:
		return api.Intercept{}, fmt.Errorf("intercept: port %d: want 1-65535", req.Port)
	case req.Workload.Kind == "" || req.Workload.Name == "":
		return api.Intercept{}, errors.New("intercept: workload kind and name are required")
	case req.GraceSeconds < 0:
		return api.Intercept{}, fmt.Errorf("intercept: grace %ds: want 0 (the default) or more", req.GraceSeconds)
	}
	id := interceptID(req.PublicKey, req.Namespace, req.Service)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.byID {
		o := e.it
		if o.ID == id || o.Namespace != req.Namespace || o.Service != req.Service {
			continue
		}
		who := o.Holder
		if !e.live() {
			who += fmt.Sprintf(" (away; held until %s unless they come back)", e.heldUntil.UTC().Format(time.TimeOnly+" MST"))
		}
		switch {
		case o.RouteAs == "":
			return api.Intercept{}, fmt.Errorf("%w: service %s/%s is intercepted by %s (all traffic): ask them to run `bridgetun leave %s`", ErrConflict, req.Namespace, req.Service, who, req.Service)
		case req.RouteAs == "":
			return api.Intercept{}, fmt.Errorf("%w: service %s/%s is intercepted by %s (isolated, route-as %q): use --isolate, or ask them to leave", ErrConflict, req.Namespace, req.Service, who, o.RouteAs)
		case o.RouteAs == req.RouteAs:
			return api.Intercept{}, fmt.Errorf("%w: route-as %q on service %s/%s is taken by %s: pick another --route-as", ErrConflict, req.RouteAs, req.Namespace, req.Service, who)
		}
	}
	if _, had := t.byID[id]; !had {
		if n := t.countLocked(req.PublicKey); n >= maxInterceptsPerKey {
			return api.Intercept{}, fmt.Errorf("intercept %s/%s: %w: this workstation already holds %d intercepts on the gateway, the most it may: end one with `bridgetun leave SERVICE`", req.Namespace, req.Service, ErrLimit, n)
		}
	}
	now := t.now()
	grace := effectiveGrace(req.GraceSeconds)
	req.GraceSeconds = int(grace / time.Second)
	e := &entry{
		it: api.Intercept{
			InterceptRequest: req,
			ID:               id,
			Target:           netip.AddrPortFrom(addr, uint16(req.Port)).String(),
			Expires:          now.Add(t.ttl),
		},
		renewed: now,
		grace:   grace,
	}
	old, had := t.byID[id]
	t.byID[id] = e
	if !had || !old.live() || old.it.Target != e.it.Target || old.it.RouteAs != e.it.RouteAs {
		t.bumpLocked()
	}
	return e.it, nil
}

// Evict drops the other holders' intercepts that conflict with req (the
// rule Add applies), for a forced replacement; it returns their holders.
// Their workstations find their ids unknown at the next renewal and their
// re-add conflicts: they report the intercept lost.
func (t *Intercepts) Evict(req api.InterceptRequest) []string {
	id := interceptID(req.PublicKey, req.Namespace, req.Service)
	t.mu.Lock()
	defer t.mu.Unlock()
	var holders []string
	bump := false
	for oid, e := range t.byID {
		o := e.it
		if oid == id || o.Namespace != req.Namespace || o.Service != req.Service {
			continue
		}
		if o.RouteAs == "" || req.RouteAs == "" || o.RouteAs == req.RouteAs {
			delete(t.byID, oid)
			holders = append(holders, o.Holder)
			bump = bump || e.live()
		}
	}
	if bump {
		t.bumpLocked()
	}
	return holders
}

// countLocked is how many intercepts, routed or held, pub holds.
func (t *Intercepts) countLocked(pub string) int {
	n := 0
	for _, e := range t.byID {
		if e.it.PublicKey == pub {
			n++
		}
	}
	return n
}

// Remove drops the peer's intercept of ns/svc, routed or held, and returns
// how many intercepts (anyone's, routed or held) remain on the same
// workload.
func (t *Intercepts) Remove(pub, ns, svc string) (removed bool, remaining int) {
	id := interceptID(pub, ns, svc)
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.byID[id]
	if !ok {
		// Already gone (its hold ended): still say who else holds the
		// Service's workload, so the caller does not restore it under them.
		for _, o := range t.byID {
			if o.it.Namespace == ns && o.it.Service == svc {
				remaining = t.onWorkloadLocked(o.it.Workload)
				break
			}
		}
		return false, remaining
	}
	delete(t.byID, id)
	if e.live() {
		t.bumpLocked()
	}
	return true, t.onWorkloadLocked(e.it.Workload)
}

// RemovePeer drops the routes of a peer whose registration expired; their
// grace holds stay (a laptop asleep longer than the registration TTL comes
// back within its grace all the same).
func (t *Intercepts) RemovePeer(pub tunnel.Key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	bump := false
	for _, e := range t.byID {
		if e.it.PublicKey == pub.String() && e.live() {
			e.heldUntil = e.renewed.Add(e.grace)
			bump = true
		}
	}
	if bump {
		t.bumpLocked()
	}
	t.releaseLocked(t.now())
}

// Renew extends the route leases of the peer's intercepts and returns the
// ids it asked about that the gateway does not route (it restarted, or the
// lease ran out and only the hold is left): the workstation adds those
// again.
func (t *Intercepts) Renew(pub string, ids []string) (unknown []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for _, id := range ids {
		e, ok := t.byID[id]
		if !ok || e.it.PublicKey != pub || !e.live() {
			unknown = append(unknown, id)
			continue
		}
		e.it.Expires, e.renewed = now.Add(t.ttl), now
	}
	return unknown
}

// Expire drops the routes whose lease ran out (their holds begin) and ends
// the holds whose grace ran out; a workload left with neither goes to the
// restorer. It returns how many of each.
func (t *Intercepts) Expire() (routes, holds int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for _, e := range t.byID {
		if e.live() && !now.Before(e.it.Expires) {
			e.heldUntil = e.renewed.Add(e.grace)
			routes++
		}
	}
	if routes > 0 {
		t.bumpLocked()
	}
	return routes, t.releaseLocked(now)
}

// releaseLocked ends the holds due at now and signals the restorer for
// workloads nothing holds any more.
func (t *Intercepts) releaseLocked(now time.Time) int {
	n := 0
	for id, e := range t.byID {
		if e.live() || now.Before(e.heldUntil) {
			continue
		}
		delete(t.byID, id)
		n++
		if t.onWorkloadLocked(e.it.Workload) == 0 && !slices.Contains(t.expired, e.it.Workload) {
			t.expired = append(t.expired, e.it.Workload)
		}
	}
	t.signal()
	return n
}

// TakeExpired returns (and forgets) the workloads whose last intercept
// and hold ended since the previous call.
func (t *Intercepts) TakeExpired() []api.Workload {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := t.expired
	t.expired = nil
	return w
}

// Kick is signalled when TakeExpired has something.
func (t *Intercepts) Kick() <-chan struct{} { return t.kick }

// Live reports whether a workload has a routed intercept (a live lease).
func (t *Intercepts) Live(w api.Workload) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.byID {
		if e.it.Workload == w && e.live() {
			return true
		}
	}
	return false
}

// Holds reports whether anything keeps a workload patched: a routed
// intercept or a grace hold.
func (t *Intercepts) Holds(w api.Workload) bool { return t.OnWorkload(w) > 0 }

// OnWorkload counts the intercepts (routed or held) on w.
func (t *Intercepts) OnWorkload(w api.Workload) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.onWorkloadLocked(w)
}

// List returns the intercepts of namespace ns ("" = all), routed and held,
// sorted.
func (t *Intercepts) List(ns string) []api.Intercept {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []api.Intercept
	for _, e := range t.byID {
		if ns == "" || e.it.Namespace == ns {
			out = append(out, e.view())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service+out[i].ID < out[j].Service+out[j].ID })
	return out
}

// Table returns the route table of Service ns/svc.
func (t *Intercepts) Table(ns, svc string) api.RouteTable {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tableLocked(ns, svc)
}

// Wait returns the table of ns/svc once its version passes after (the
// version is global: any change counts), or when ctx ends.
func (t *Intercepts) Wait(ctx context.Context, ns, svc string, after uint64) api.RouteTable {
	for {
		t.mu.Lock()
		tab := t.tableLocked(ns, svc)
		ch := t.changed
		t.mu.Unlock()
		if tab.Version > after {
			return tab
		}
		select {
		case <-ctx.Done():
			return tab
		case <-ch:
		}
	}
}

// TargetAllowed reports whether target is a routed intercept's target.
func (t *Intercepts) TargetAllowed(target string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.byID {
		if e.live() && e.it.Target == target {
			return true
		}
	}
	return false
}

// TargetServices returns the Services of namespace ns with a routed
// intercept whose target is target, sorted: the relay lets a sidecar
// CONNECT to a target only for a Service its pod backs.
func (t *Intercepts) TargetServices(ns, target string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, e := range t.byID {
		if e.live() && e.it.Namespace == ns && e.it.Target == target && !slices.Contains(out, e.it.Service) {
			out = append(out, e.it.Service)
		}
	}
	slices.Sort(out)
	return out
}

func (t *Intercepts) tableLocked(ns, svc string) api.RouteTable {
	tab := api.RouteTable{Version: t.version}
	for _, e := range t.byID {
		if it := e.it; e.live() && it.Namespace == ns && it.Service == svc {
			tab.Routes = append(tab.Routes, api.Route{ID: it.ID, Target: it.Target, RouteAs: it.RouteAs, Holder: it.Holder})
		}
	}
	slices.SortFunc(tab.Routes, func(a, b api.Route) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	return tab
}

func (t *Intercepts) onWorkloadLocked(w api.Workload) int {
	n := 0
	for _, e := range t.byID {
		if e.it.Workload == w {
			n++
		}
	}
	return n
}

func (t *Intercepts) bumpLocked() {
	t.version++
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *Intercepts) signal() {
	if len(t.expired) == 0 {
		return
	}
	select {
	case t.kick <- struct{}{}:
	default:
	}
}
