package session

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// inboundRecorder stands for the tunnel's inbound filter: it records the
// calls and which ports are open.
type inboundRecorder struct {
	mu    sync.Mutex
	open  map[uint16]int
	calls []string
}

func (r *inboundRecorder) AllowInbound(port uint16) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.open == nil {
		r.open = map[uint16]int{}
	}
	r.open[port]++
	r.calls = append(r.calls, fmt.Sprintf("allow %d", port))
}

func (r *inboundRecorder) RevokeInbound(port uint16) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.open[port]--; r.open[port] <= 0 {
		delete(r.open, port)
	}
	r.calls = append(r.calls, fmt.Sprintf("revoke %d", port))
}

func (r *inboundRecorder) state() (map[uint16]int, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.open), slices.Clone(r.calls)
}

// TestInterceptOpensInboundPortWhileItLasts: the port the gateway dials
// (the local port) is open in the tunnel's inbound filter from the
// intercept's start to its leave, also when the local server listens on
// every address itself (Listen returns no listener).
func TestInterceptOpensInboundPortWhileItLasts(t *testing.T) {
	rec := &inboundRecorder{}
	ic := testInterceptor(t, rolledOutWorld(t), newFakeGateway(t), interceptConfig{
		RolloutTimeout: 5 * time.Second, Inbound: rec})
	if _, err := ic.Intercept(t.Context(), InterceptSpec{Service: "api", LocalPort: 8080}, nil); err != nil {
		t.Fatal(err)
	}
	if open, calls := rec.state(); !maps.Equal(open, map[uint16]int{8080: 1}) {
		t.Fatalf("while intercepting: open ports %v (calls %q), want 8080", open, calls)
	}
	if _, err := ic.Leave("api"); err != nil {
		t.Fatal(err)
	}
	if open, calls := rec.state(); len(open) != 0 || !slices.Equal(calls, []string{"allow 8080", "revoke 8080"}) {
		t.Errorf("after leave: open ports %v, calls %q; want none open after allow 8080, revoke 8080", open, calls)
	}
}

// TestInterceptRefusedClosesInboundPort: an intercept that fails after the
// port was opened closes it again.
func TestInterceptRefusedClosesInboundPort(t *testing.T) {
	rec := &inboundRecorder{}
	g := newFakeGateway(t)
	g.addStatus = http.StatusConflict
	ic := testInterceptor(t, apiWorld(), g, interceptConfig{Inbound: rec})
	if _, err := ic.Intercept(t.Context(), InterceptSpec{Service: "api", LocalPort: 8080}, nil); err == nil {
		t.Fatal("intercept: got no error, want the refusal")
	}
	if open, calls := rec.state(); len(open) != 0 || !slices.Equal(calls, []string{"allow 8080", "revoke 8080"}) {
		t.Errorf("after the refusal: open ports %v, calls %q; want none open after allow 8080, revoke 8080", open, calls)
	}
}
