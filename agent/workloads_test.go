package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/tunnel"
)

// recordingPatcher is a WorkloadPatcher at the seam: every Service is
// served by Deployment "api"; it records patches and restores.
type recordingPatcher struct {
	mu        sync.Mutex
	patchErr  error
	patches   []string // "workload grace patchedBy"
	restores  []api.Workload
	isPatched bool
}

func (p *recordingPatcher) Resolve(_ context.Context, ns, service, port string) (api.Workload, error) {
	if service == "missing" {
		return api.Workload{}, errors.New("service " + ns + "/missing not found")
	}
	return api.Workload{Namespace: ns, Kind: "Deployment", Name: "api"}, nil
}

func (p *recordingPatcher) Patch(_ context.Context, ns, service, port string, w api.Workload, grace time.Duration, by string) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.patchErr != nil {
		return false, p.patchErr
	}
	p.patches = append(p.patches, w.String()+" "+grace.String()+" "+by)
	changed := !p.isPatched
	p.isPatched = true
	return changed, nil
}

func (p *recordingPatcher) Restore(_ context.Context, w api.Workload) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.restores = append(p.restores, w)
	was := p.isPatched
	p.isPatched = false
	return was, nil
}

// recordingAuthz allows what fakeAuthz does and records each review.
type recordingAuthz struct {
	fakeAuthz
	mu   sync.Mutex
	seen []Access
}

func (r *recordingAuthz) Allowed(ctx context.Context, id Identity, a Access) (bool, error) {
	r.mu.Lock()
	r.seen = append(r.seen, a)
	r.mu.Unlock()
	return r.fakeAuthz.Allowed(ctx, id, a)
}

func patchingControl(t *testing.T) (*Control, *recordingPatcher, *recordingAuthz) {
	t.Helper()
	gwKey, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	fp := &fakePeers{peers: map[tunnel.Key]tunnel.PeerConfig{}, hs: map[tunnel.Key]time.Time{}}
	wl := &recordingPatcher{}
	authz := &recordingAuthz{fakeAuthz: fakeAuthz{deny: map[string]bool{}}}
	c := NewControl(ControlConfig{Gateway: fp, GatewayKey: gwKey, TTL: time.Minute, Namespace: "ns",
		Auth: fakeAuth{}, Authz: authz, Intercepts: NewIntercepts(0, nil), Workloads: wl})
	return c, wl, authz
}

func registered(t *testing.T, c *Control, who Caller) string {
	t.Helper()
	priv := newKey(t)
	if _, err := c.Register(who, regReq(t, c, who, priv)); err != nil {
		t.Fatal(err)
	}
	return priv.PublicKey().String()
}

// TestAddInterceptPatchesOnCallersBehalf: the gateway resolves the
// workload itself (a caller's claim of another workload is replaced),
// reviews the caller's "intercept" right on that one — "update" (the edit
// role) also does, and neither is refused in one line — and patches it
// with the granted grace and the caller's key.
func TestAddInterceptPatchesOnCallersBehalf(t *testing.T) {
	c, wl, authz := patchingControl(t)
	alice := bearer("alice")
	key := registered(t, c, alice)
	req := api.InterceptRequest{PublicKey: key, Namespace: "ns", Service: "web", Port: 8080, GraceSeconds: 60,
		Workload: api.Workload{Namespace: "ns", Kind: "Deployment", Name: "gateway-itself"}}
	it, err := c.AddIntercept(t.Context(), alice, req)
	if err != nil {
		t.Fatal(err)
	}
	apiW := api.Workload{Namespace: "ns", Kind: "Deployment", Name: "api"}
	if it.Workload != apiW || !it.Patched {
		t.Errorf("intercept: workload %s patched %v; want the resolved %s, patched", it.Workload, it.Patched, apiW)
	}
	if want := []string{"ns/Deployment/api 1m0s " + key}; strings.Join(wl.patches, "|") != strings.Join(want, "|") {
		t.Errorf("patches: got %q, want %q", wl.patches, want)
	}
	if len(authz.seen) != 1 || authz.seen[0] != (Access{Verb: api.InterceptVerb, Group: "apps", Resource: "deployments", Namespace: "ns", Name: "api"}) {
		t.Errorf("reviews: got %+v, want one %q review of deployments ns/api", authz.seen, api.InterceptVerb)
	}

	// bob has the edit role (update, no custom verb): allowed.
	bob := bearer("bob")
	bobKey := registered(t, c, bob)
	authz.deny["bob:"+api.InterceptVerb] = true
	bobReq := api.InterceptRequest{PublicKey: bobKey, Namespace: "ns", Service: "web", Port: 8080, RouteAs: "bob"}
	if _, err := c.AddIntercept(t.Context(), bob, bobReq); err == nil || !errors.Is(err, ErrConflict) {
		t.Errorf("bob (update only) isolating next to alice's full intercept: got %v, want the conflict (his rights passed)", err)
	}
	// carol has neither.
	carol := bearer("carol")
	carolKey := registered(t, c, carol)
	authz.deny["carol:"+api.InterceptVerb], authz.deny["carol:update"] = true, true
	_, err = c.AddIntercept(t.Context(), carol, api.InterceptRequest{PublicKey: carolKey, Namespace: "ns", Service: "web", Port: 8080})
	if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), `carol may not intercept deployment ns/api (it needs "intercept" or "update"`) || strings.Contains(err.Error(), "\n") {
		t.Errorf("carol without rights: got %v, want one 403 line naming the verbs", err)
	}
	if _, err := c.AddIntercept(t.Context(), alice, api.InterceptRequest{PublicKey: key, Namespace: "ns", Service: "missing", Port: 8080}); !errors.Is(err, ErrWorkload) || interceptStatus(err) != 422 {
		t.Errorf("a Service with no workload: got %v (status %d), want a 422 workload error", err, interceptStatus(err))
	}
}

// TestAddInterceptFailedPatchLeavesNothing: a refused patch (admission,
// say) drops the new intercept again — no route to a workload without
// the sidecar — but keeps an intercept that was already there (a re-add
// whose re-patch failed is retried by its workstation).
func TestAddInterceptFailedPatchLeavesNothing(t *testing.T) {
	c, wl, _ := patchingControl(t)
	alice := bearer("alice")
	key := registered(t, c, alice)
	req := api.InterceptRequest{PublicKey: key, Namespace: "ns", Service: "web", Port: 8080}
	wl.patchErr = errors.New(`namespace "ns" refuses the patched pod: violates PodSecurity "baseline:latest"`)
	_, err := c.AddIntercept(t.Context(), alice, req)
	if !errors.Is(err, ErrWorkload) || !strings.Contains(err.Error(), "violates PodSecurity") {
		t.Fatalf("refused patch: got %v, want the admission refusal as a workload error", err)
	}
	if n := len(c.icpt.List("ns")); n != 0 {
		t.Errorf("after a refused patch: %d intercepts in the table, want none", n)
	}
	wl.patchErr = nil
	if _, err := c.AddIntercept(t.Context(), alice, req); err != nil {
		t.Fatal(err)
	}
	wl.patchErr = errors.New("api server unavailable")
	if _, err := c.AddIntercept(t.Context(), alice, req); err == nil {
		t.Fatal("re-add with a failing patch: want the error")
	}
	if n := len(c.icpt.List("ns")); n != 1 {
		t.Errorf("a re-add whose patch failed: %d intercepts, want the existing one kept", n)
	}
}

// TestRestoreWorkloadOnlyWhenUnheld: the gateway restores a workload for
// a caller with the right only when no intercept (anyone's) holds it.
func TestRestoreWorkloadOnlyWhenUnheld(t *testing.T) {
	c, wl, authz := patchingControl(t)
	alice, bob := bearer("alice"), bearer("bob")
	key := registered(t, c, alice)
	if _, err := c.AddIntercept(t.Context(), alice, api.InterceptRequest{PublicKey: key, Namespace: "ns", Service: "web", Port: 8080}); err != nil {
		t.Fatal(err)
	}
	apiW := api.Workload{Namespace: "ns", Kind: "Deployment", Name: "api"}
	_, err := c.RestoreWorkload(t.Context(), bob, apiW)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "1 intercept(s) at the gateway hold it") {
		t.Errorf("bob restores alice's intercepted workload: got %v, want a conflict", err)
	}
	if len(wl.restores) != 0 {
		t.Fatalf("restored while held: %v", wl.restores)
	}
	c.icpt.Remove(key, "ns", "web")
	authz.deny["bob"] = true
	if _, err := c.RestoreWorkload(t.Context(), bob, apiW); !errors.Is(err, ErrForbidden) {
		t.Errorf("restore without rights: got %v, want forbidden", err)
	}
	// Through the HTTP API, as a workstation calls it.
	body, _ := json.Marshal(api.RestoreRequest{Workload: apiW})
	r := httptest.NewRequest(http.MethodPost, "/v1/workloads/restore", bytes.NewReader(body))
	r.Header.Set("Authorization", "Bearer user:alice")
	w := httptest.NewRecorder()
	c.ServeHTTP(w, r)
	var rr api.RestoreResponse
	if err := json.Unmarshal(w.Body.Bytes(), &rr); w.Code != http.StatusOK || err != nil || !rr.Restored || len(wl.restores) != 1 {
		t.Errorf("POST /v1/workloads/restore when unheld: got %d %q, restores %v; want 200, restored once", w.Code, w.Body.String(), wl.restores)
	}
}
