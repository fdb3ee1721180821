package agent

import (
	"slices"
	"sync"
	"time"
)

// sidecarSeenFor is how long after its last route poll a sidecar still
// counts as attached: a poll lasts up to 25 s and the next follows at
// once, so a live sidecar is never silent this long.
const sidecarSeenFor = 40 * time.Second

// SidecarsSeen remembers which sidecar pods poll the relay for which
// Service, so an intercept's owner can see that its sidecars run and reach
// the gateway (`bridgetun doctor`, status) without any Kubernetes rights.
// Only pods the relay authenticated and bound to the Service are recorded,
// so the set is bounded by the sidecar pods that exist.
type SidecarsSeen struct {
	now func() time.Time

	mu    sync.Mutex
	polls map[seenKey]*seenPoll
}

type seenKey struct{ ns, svc, pod string }

type seenPoll struct {
	open int       // polls in flight now
	last time.Time // when the last one ended (or began)
}

func newSidecarsSeen(now func() time.Time) *SidecarsSeen {
	return &SidecarsSeen{now: now, polls: map[seenKey]*seenPoll{}}
}

// Polling records that pod's sidecar opened a route poll for ns/svc; call
// the returned func when the poll ends.
func (s *SidecarsSeen) Polling(ns, svc, pod string) (done func()) {
	k := seenKey{ns, svc, pod}
	s.mu.Lock()
	s.pruneLocked()
	p := s.polls[k]
	if p == nil {
		p = &seenPoll{}
		s.polls[k] = p
	}
	p.open++
	p.last = s.now()
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		p.open--
		p.last = s.now()
		s.mu.Unlock()
	}
}

// Of lists, sorted, the pods whose sidecar polls for ns/svc now or did
// within sidecarSeenFor.
func (s *SidecarsSeen) Of(ns, svc string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked()
	var pods []string
	for k := range s.polls {
		if k.ns == ns && k.svc == svc {
			pods = append(pods, k.pod)
		}
	}
	slices.Sort(pods)
	return pods
}

func (s *SidecarsSeen) pruneLocked() {
	cut := s.now().Add(-sidecarSeenFor)
	for k, p := range s.polls {
		if p.open == 0 && p.last.Before(cut) {
			delete(s.polls, k)
		}
	}
}
