package session

import (
	"net/http"
	"strings"
	"testing"

	"github.com/bridgetun/bridgetun/agent/api"
)

// TestControlClientCalls: each typed call uses the control API's method
// and path and decodes the answer; a non-2xx answer is a ControlError
// carrying the gateway's one line.
func TestControlClientCalls(t *testing.T) {
	g := newFakeGateway(t)
	l := testLink(t, g, linkConfig{})
	c, ctx := l.control, t.Context()
	if rr, err := c.Register(ctx, api.RegisterRequest{PublicKey: "pub"}, nil); err != nil || rr.Address != "198.19.0.7/32" {
		t.Errorf("register: got %+v, %v", rr, err)
	}
	if it, err := c.AddIntercept(ctx, api.InterceptRequest{Service: "api"}); err != nil || it.ID != "id-api" {
		t.Errorf("add: got %+v, %v", it, err)
	}
	g.renewUnknown = []string{"x"}
	if rr, err := c.RenewIntercepts(ctx, api.RenewRequest{IDs: []string{"x"}}); err != nil || len(rr.Unknown) != 1 {
		t.Errorf("renew: got %+v, %v", rr, err)
	}
	if lr, err := c.LeaveIntercept(ctx, api.LeaveRequest{Service: "api"}); err != nil || !lr.Removed {
		t.Errorf("leave: got %+v, %v", lr, err)
	}
	g.live = []api.Intercept{{ID: "a"}, {ID: "b"}}
	if live, err := c.ListIntercepts(ctx, "app"); err != nil || len(live) != 2 {
		t.Errorf("list: got %+v, %v", live, err)
	}
	want := []string{"gw-1 POST /v1/register", "gw-1 POST /v1/intercepts", "gw-1 POST /v1/intercepts/renew", "gw-1 DELETE /v1/intercepts", "gw-1 GET /v1/intercepts"}
	if got := g.recorded(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("calls: got %q, want %q", got, want)
	}
	g.addStatus = http.StatusConflict
	_, err := c.AddIntercept(ctx, api.InterceptRequest{Service: "api"})
	if !isConflict(err) || err.Error() != "api is intercepted by bob@laptop" {
		t.Errorf("conflict: got %v (conflict=%v), want a 409 with the gateway's message", err, isConflict(err))
	}
}

// TestControlClientUnreachable names the pod when the dial fails.
func TestControlClientUnreachable(t *testing.T) {
	g := newFakeGateway(t)
	g.setDown("gw-1", true)
	l := testLink(t, g, linkConfig{})
	_, err := l.control.Register(t.Context(), api.RegisterRequest{PublicKey: "pub"}, nil)
	if err == nil || !strings.Contains(err.Error(), "gateway pod app/gw-1: POST /v1/register") {
		t.Errorf("got %v, want an error naming the pod and call", err)
	}
}
