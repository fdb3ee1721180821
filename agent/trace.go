package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
)

// Traces is the gateway's store of header-propagation traces (the protocol
// is in agent/api/trace.go): a developer opens one, the sidecars of
// intercepted Services report the requests they see while it is open, and
// its owner reads which Services saw its route-as value and which were
// called without any. It is bounded: at most maxTraces records, of which
// maxTracesPerOwner per identity, maxTraceHops Services per trace, each
// kept api.TraceRetention. The control API (its owner) and the relay
// (sidecars, bound to their pods) share it through Intercepts.Traces.
type Traces struct {
	now  func() time.Time
	wake func() uint64 // wakes every route poll; returns the route tables' new version

	mu      sync.Mutex
	byID    map[string]*traceEntry
	epoch   uint64            // bumped by every Start: route tables carry it while a trace is open
	pollers map[string]uint64 // open route polls: sidecar pod UID/Service → the version it waits after
	polled  chan struct{}     // closed and replaced whenever pollers changes
}

// traceEntry is one trace and its hops by namespace/Service.
type traceEntry struct {
	addrs     []netip.Addr // the owner's tunnel addresses when it started
	owner     Identity
	t         api.Trace
	hops      map[string]*api.TraceHop
	truncated bool
}

// Caps of the trace store; variables so tests can lower them.
var (
	maxTraces         = 64
	maxTracesPerOwner = 8
	maxTraceHops      = 32
	// traceArmTimeout bounds how long Start waits for the sidecars that
	// were polling to fetch the table naming the new epoch (a dead
	// sidecar's poll must not hold a trace back).
	traceArmTimeout = 2 * time.Second
)

// ErrNoTrace: no trace with that id (it never existed, or its record
// expired after api.TraceRetention).
var ErrNoTrace = errors.New("no such trace")

func newTraces(now func() time.Time, wake func() uint64) *Traces {
	return &Traces{now: now, wake: wake, byID: map[string]*traceEntry{}, pollers: map[string]uint64{}, polled: make(chan struct{})}
}

// Traces is the gateway's trace store, shared by the control API and the relay.
func (t *Intercepts) Traces() *Traces { return t.traces }

// wakePolls answers every open route poll (the version is global) and
// returns the new version.
func (t *Intercepts) wakePolls() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.bumpLocked()
	return t.version
}

// Start opens a trace owned by owner. Before it returns, the sidecars whose
// route polls were open have fetched a table naming the new epoch (or
// traceArmTimeout passed), so they report requests without the header
// from the first one the trace's request causes.
//
// addrs are the owner's workstations' tunnel addresses: connections from
// them through the gateway while the trace is open are its gateway hop.
func (s *Traces) Start(ctx context.Context, owner Identity, req api.TraceStartRequest, addrs ...netip.Addr) (api.Trace, error) {
	if req.WindowSeconds < 0 {
		return api.Trace{}, fmt.Errorf("trace: window %ds: want 0 (the default) or more", req.WindowSeconds)
	}
	window := api.DefaultTraceWindow
	if req.WindowSeconds > 0 {
		window = min(time.Duration(req.WindowSeconds)*time.Second, api.MaxTraceWindow)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	s.mu.Lock()
	now := s.now()
	s.expireLocked(now)
	if err := s.makeRoomLocked(owner, now); err != nil {
		s.mu.Unlock()
		return api.Trace{}, err
	}
	e := &traceEntry{owner: owner, addrs: addrs, hops: map[string]*api.TraceHop{}, t: api.Trace{
		ID: api.TracePrefix + hex.EncodeToString(b[:]), Owner: owner.User, Started: now, Closes: now.Add(window),
	}}
	s.byID[e.t.ID] = e
	s.epoch++
	waiting := make([]string, 0, len(s.pollers))
	for k := range s.pollers {
		waiting = append(waiting, k)
	}
	s.mu.Unlock()
	if s.wake != nil {
		v := s.wake()
		s.awaitPolls(ctx, waiting, v)
	}
	return e.view(), nil
}

// makeRoomLocked frees a place for a new trace of owner: the owner's oldest
// closed trace when it has maxTracesPerOwner, anyone's oldest closed one
// when the store is full; ErrLimit when only open traces hold the places.
func (s *Traces) makeRoomLocked(owner Identity, now time.Time) error {
	var mine []*traceEntry
	for _, e := range s.byID {
		if sameIdentity(e.owner, owner) {
			mine = append(mine, e)
		}
	}
	if len(mine) >= maxTracesPerOwner {
		if !s.dropOldestClosedLocked(mine, now) {
			return fmt.Errorf("trace: %w: you have %d traces open, the most one identity may: wait until one closes (at most %s)", ErrLimit, len(mine), api.MaxTraceWindow)
		}
	}
	if len(s.byID) >= maxTraces {
		all := make([]*traceEntry, 0, len(s.byID))
		for _, e := range s.byID {
			all = append(all, e)
		}
		if !s.dropOldestClosedLocked(all, now) {
			return fmt.Errorf("trace: %w: the gateway has %d traces open, its cap: retry in a minute", ErrLimit, len(s.byID))
		}
	}
	return nil
}

func (s *Traces) dropOldestClosedLocked(es []*traceEntry, now time.Time) bool {
	var oldest *traceEntry
	for _, e := range es {
		if now.Before(e.t.Closes) {
			continue
		}
		if oldest == nil || e.t.Started.Before(oldest.t.Started) {
			oldest = e
		}
	}
	if oldest == nil {
		return false
	}
	delete(s.byID, oldest.t.ID)
	return true
}

// expireLocked forgets traces older than api.TraceRetention.
func (s *Traces) expireLocked(now time.Time) {
	for id, e := range s.byID {
		if now.Sub(e.t.Started) >= api.TraceRetention {
			delete(s.byID, id)
		}
	}
}

// awaitPolls waits until every poller in keys has polled again after
// version v (it fetched the new table), or until traceArmTimeout.
func (s *Traces) awaitPolls(ctx context.Context, keys []string, v uint64) {
	if len(keys) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, traceArmTimeout)
	defer cancel()
	for {
		s.mu.Lock()
		pending := slices.ContainsFunc(keys, func(k string) bool { return s.pollers[k] < v })
		ch := s.polled
		s.mu.Unlock()
		if !pending {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// Polling records an open route poll of a sidecar (key: its pod UID and
// Service) that waits for a version after after; call done when it ends.
func (s *Traces) Polling(key string, after uint64) (done func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pollers[key]; !ok && len(s.pollers) >= maxTracePollers {
		return func() {} // bounded: an unknown poller is just not waited for
	}
	s.pollers[key] = after
	s.changedLocked()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.pollers[key] == after {
			delete(s.pollers, key)
			s.changedLocked()
		}
	}
}

// maxTracePollers bounds the poller table (a sidecar holds one poll; the
// relay's connection cap is lower).
const maxTracePollers = 8192

func (s *Traces) changedLocked() {
	close(s.polled)
	s.polled = make(chan struct{})
}

// Epoch is the epoch route tables carry: the latest Start's while any trace
// is open, else 0.
func (s *Traces) Epoch() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for _, e := range s.byID {
		if now.Before(e.t.Closes) {
			return s.epoch
		}
	}
	return 0
}

// Record notes a sighting by a sidecar of Service ns/svc (the relay has
// checked that its pod backs it): a request with routeAs (a trace value)
// counts for that trace while it is open; a request without the header
// (routeAs "") counts for every open trace.
func (s *Traces) Record(ns, svc, routeAs string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if routeAs != "" {
		if e, ok := s.byID[routeAs]; ok && now.Before(e.t.Closes) {
			h := e.hop(ns, svc)
			if h != nil {
				if h.Seen == 0 {
					h.FirstSeen = now
				}
				h.Seen++
			}
		}
		return
	}
	for _, e := range s.byID {
		if !now.Before(e.t.Closes) {
			continue
		}
		if h := e.hop(ns, svc); h != nil {
			if h.Without == 0 {
				h.FirstWithout = now
			}
			h.Without++
		}
	}
}

// maxTraceFlows bounds a trace's gateway hop.
const maxTraceFlows = 8

// Flow notes a TCP connection the gateway admitted from src to dst: it
// counts for every open trace whose owner has src as a tunnel address.
func (s *Traces) Flow(src netip.Addr, dst netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.byID) == 0 {
		return
	}
	now := s.now()
	for _, e := range s.byID {
		if now.Before(e.t.Closes) && len(e.t.Gateway) < maxTraceFlows && slices.Contains(e.addrs, src) {
			e.t.Gateway = append(e.t.Gateway, api.TraceFlow{Dst: dst.String(), At: now})
		}
	}
}

// Get returns the trace id for its owner: ErrNoTrace when there is none,
// ErrForbidden when it is someone else's.
func (s *Traces) Get(who Identity, id string) (api.Trace, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(s.now())
	e, ok := s.byID[id]
	if !ok {
		return api.Trace{}, fmt.Errorf("trace %s: %w (traces are kept %s)", id, ErrNoTrace, api.TraceRetention)
	}
	if !sameIdentity(e.owner, who) {
		return api.Trace{}, fmt.Errorf("trace %s: %w: it belongs to %s", id, ErrForbidden, e.owner.User)
	}
	return e.view(), nil
}

// hop returns the hop of ns/svc, made on first use; nil past maxTraceHops.
func (e *traceEntry) hop(ns, svc string) *api.TraceHop {
	k := ns + "/" + svc
	if h, ok := e.hops[k]; ok {
		return h
	}
	if len(e.hops) >= maxTraceHops {
		e.truncated = true
		return nil
	}
	h := &api.TraceHop{Namespace: ns, Service: svc}
	e.hops[k] = h
	return h
}

// view copies the trace with its hops sorted by namespace/Service.
func (e *traceEntry) view() api.Trace {
	t := e.t
	t.Gateway = slices.Clone(e.t.Gateway)
	t.Truncated = e.truncated
	t.Hops = make([]api.TraceHop, 0, len(e.hops))
	for _, h := range e.hops {
		t.Hops = append(t.Hops, *h)
	}
	slices.SortFunc(t.Hops, func(a, b api.TraceHop) int {
		return strings.Compare(a.Namespace+"/"+a.Service, b.Namespace+"/"+b.Service)
	})
	return t
}

// validSighting checks a sidecar's report: a trace value or none.
func validSighting(s api.TraceSighting) error {
	switch {
	case s.Namespace == "" || s.Service == "":
		return errors.New("sighting: namespace and service are required")
	case s.RouteAs != "" && (!strings.HasPrefix(s.RouteAs, api.TracePrefix) || len(s.RouteAs) > 64):
		return fmt.Errorf("sighting: route_as %.64q is not a trace value (%s…)", s.RouteAs, api.TracePrefix)
	}
	return nil
}
