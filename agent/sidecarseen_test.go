package agent

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
)

// TestSidecarsSeen: a pod counts while its poll is open and for
// sidecarSeenFor after it ended, then is forgotten; only the intercept's
// own key learns the pods of its Service.
func TestSidecarsSeen(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	tab := NewIntercepts(0, clock)
	it, err := tab.Add(api.InterceptRequest{PublicKey: "alice", Namespace: "ns", Service: "api", Port: 8080,
		Workload: api.Workload{Kind: "Deployment", Name: "api"}}, netip.MustParseAddr("100.64.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	seen := tab.Sidecars()
	doneA := seen.Polling("ns", "api", "api-a")
	doneB := seen.Polling("ns", "api", "api-b")
	otherDone := seen.Polling("ns", "stats", "stats-a")
	defer otherDone()
	if got := tab.SidecarsOf("alice", []string{it.ID}); !slices.Equal(got[it.ID], []string{"api-a", "api-b"}) {
		t.Errorf("two polls open: got %v, want [api-a api-b]", got)
	}
	if got := tab.SidecarsOf("mallory", []string{it.ID}); len(got) != 0 {
		t.Errorf("another key asked: got %v, want nothing", got)
	}
	doneA()
	now = now.Add(sidecarSeenFor - time.Second)
	doneB()
	if got := seen.Of("ns", "api"); !slices.Equal(got, []string{"api-a", "api-b"}) {
		t.Errorf("polls just ended: got %v, want both", got)
	}
	now = now.Add(2 * time.Second)
	if got := seen.Of("ns", "api"); !slices.Equal(got, []string{"api-b"}) {
		t.Errorf("api-a silent %s: got %v, want [api-b]", sidecarSeenFor+time.Second, got)
	}
	now = now.Add(sidecarSeenFor)
	if got := tab.SidecarsOf("alice", []string{it.ID}); got[it.ID] == nil || len(got[it.ID]) != 0 {
		t.Errorf("all silent: got %#v, want an empty list for the id", got)
	}
	if got := seen.Of("ns", "stats"); !slices.Equal(got, []string{"stats-a"}) {
		t.Errorf("an open poll is never forgotten: got %v", got)
	}
}
