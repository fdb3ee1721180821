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

// Intercepts is the gateway's table of live intercepts. Each lives as long as
// its lease: the workstation renews it every few seconds; an expired one is
// dropped and its workload handed to the orphan restorer.
type Intercepts struct {
	ttl     time.Duration
	now     func() time.Time
	mu      sync.Mutex
	byID    map[string]*api.Intercept
	version uint64
	changed chan struct{}  // closed and replaced on every change
	expired []api.Workload // workloads whose last intercept expired, for the restorer
	kick    chan struct{}  // signals the restorer
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
	return &Intercepts{ttl: ttl, now: now, version: 1, byID: map[string]*api.Intercept{}, changed: make(chan struct{}), kick: make(chan struct{}, 1)}
}

// TTL is the lease length.
func (t *Intercepts) TTL() time.Duration { return t.ttl }

// interceptID is stable per workstation and Service, so a re-add replaces.
func interceptID(pub, ns, svc string) string {
	h := sha256.Sum256([]byte(pub + "\x00" + ns + "\x00" + svc))
	return hex.EncodeToString(h[:6])
}

// Add records an intercept for the peer at addr, or refreshes the peer's own
// one for the same Service. A full intercept excludes every other holder's
// intercept of the Service and the other way round; two isolated ones must
// use different route-as values.
func (t *Intercepts) Add(req api.InterceptRequest, addr netip.Addr) (api.Intercept, error) {
	switch {
	case req.Namespace == "" || req.Service == "":
		return api.Intercept{}, errors.New("intercept: namespace and service are required")
	case req.Port < 1 || req.Port > 65535:
		return api.Intercept{}, fmt.Errorf("intercept: port %d: want 1-65535", req.Port)
	case req.Workload.Kind == "" || req.Workload.Name == "":
		return api.Intercept{}, errors.New("intercept: workload kind and name are required")
	}
	id := interceptID(req.PublicKey, req.Namespace, req.Service)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range t.byID {
		if o.ID == id || o.Namespace != req.Namespace || o.Service != req.Service {
			continue
		}
		switch {
		case o.RouteAs == "":
			return api.Intercept{}, fmt.Errorf("%w: service %s/%s is intercepted by %s (all traffic): ask them to run `bridgetun leave %s`", ErrConflict, req.Namespace, req.Service, o.Holder, req.Service)
		case req.RouteAs == "":
			return api.Intercept{}, fmt.Errorf("%w: service %s/%s is intercepted by %s (isolated, route-as %q): use --isolate, or ask them to leave", ErrConflict, req.Namespace, req.Service, o.Holder, o.RouteAs)
		case o.RouteAs == req.RouteAs:
			return api.Intercept{}, fmt.Errorf("%w: route-as %q on service %s/%s is taken by %s: pick another --route-as", ErrConflict, req.RouteAs, req.Namespace, req.Service, o.Holder)
		}
	}
	it := &api.Intercept{
		InterceptRequest: req,
		ID:               id,
		Target:           netip.AddrPortFrom(addr, uint16(req.Port)).String(),
		Expires:          t.now().Add(t.ttl),
	}
	old, had := t.byID[id]
	t.byID[id] = it
	if !had || old.Target != it.Target || old.RouteAs != it.RouteAs {
		t.bumpLocked()
	}
	return *it, nil
}

// Remove drops the peer's intercept of ns/svc and returns how many
// intercepts (anyone's) remain on the same workload.
func (t *Intercepts) Remove(pub, ns, svc string) (removed bool, remaining int) {
	id := interceptID(pub, ns, svc)
	t.mu.Lock()
	defer t.mu.Unlock()
	it, ok := t.byID[id]
	if !ok {
		// Already gone (its lease expired): still say who else holds the
		// Service's workload, so the caller does not restore it under them.
		for _, o := range t.byID {
			if o.Namespace == ns && o.Service == svc {
				remaining = t.onWorkloadLocked(o.Workload)
				break
			}
		}
		return false, remaining
	}
	delete(t.byID, id)
	t.bumpLocked()
	return true, t.onWorkloadLocked(it.Workload)
}

// RemovePeer drops every intercept of a peer (its registration expired).
func (t *Intercepts) RemovePeer(pub tunnel.Key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, it := range t.byID {
		if it.PublicKey == pub.String() {
			delete(t.byID, id)
			t.bumpLocked()
			if t.onWorkloadLocked(it.Workload) == 0 {
				t.expired = append(t.expired, it.Workload)
			}
		}
	}
	t.signal()
}

// Renew extends the leases of the peer's intercepts and returns the ids it
// asked about that the gateway does not know (it restarted): the workstation
// adds those again.
func (t *Intercepts) Renew(pub string, ids []string) (unknown []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	exp := t.now().Add(t.ttl)
	for _, id := range ids {
		it, ok := t.byID[id]
		if !ok || it.PublicKey != pub {
			unknown = append(unknown, id)
			continue
		}
		it.Expires = exp
	}
	return unknown
}

// Expire drops intercepts whose lease ran out and returns how many.
func (t *Intercepts) Expire() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	n := 0
	for id, it := range t.byID {
		if now.Before(it.Expires) {
			continue
		}
		delete(t.byID, id)
		n++
		if t.onWorkloadLocked(it.Workload) == 0 {
			t.expired = append(t.expired, it.Workload)
		}
	}
	if n > 0 {
		t.bumpLocked()
		t.signal()
	}
	return n
}

// TakeExpired returns (and forgets) the workloads whose last intercept
// expired since the previous call.
func (t *Intercepts) TakeExpired() []api.Workload {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := t.expired
	t.expired = nil
	return w
}

// Kick is signalled when TakeExpired has something.
func (t *Intercepts) Kick() <-chan struct{} { return t.kick }

// Live reports whether a workload has a live intercept.
func (t *Intercepts) Live(w api.Workload) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.onWorkloadLocked(w) > 0
}

// List returns the live intercepts of namespace ns ("" = all), sorted.
func (t *Intercepts) List(ns string) []api.Intercept {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []api.Intercept
	for _, it := range t.byID {
		if ns == "" || it.Namespace == ns {
			out = append(out, *it)
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

// TargetAllowed reports whether target is a live intercept's target.
func (t *Intercepts) TargetAllowed(target string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, it := range t.byID {
		if it.Target == target {
			return true
		}
	}
	return false
}

func (t *Intercepts) tableLocked(ns, svc string) api.RouteTable {
	tab := api.RouteTable{Version: t.version}
	for _, it := range t.byID {
		if it.Namespace == ns && it.Service == svc {
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
	for _, it := range t.byID {
		if it.Workload == w {
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
