package agent

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/tunnel"
)

// TestControlCaps: the gateway admits at most maxPeers registrations and
// maxInterceptsPerKey intercepts per workstation key; past a cap the call is
// refused with 429 and one line naming the cap, while refreshing a
// registration or re-adding one's own intercept still works, and ending
// one frees its place.
func TestControlCaps(t *testing.T) {
	oldPeers, oldIcpt := maxPeers, maxInterceptsPerKey
	maxPeers, maxInterceptsPerKey = 2, 2
	t.Cleanup(func() { maxPeers, maxInterceptsPerKey = oldPeers, oldIcpt })

	c, _, now := newTestControl(t)
	c.icpt = NewIntercepts(0, func() time.Time { return *now })
	srv := httptest.NewServer(c)
	defer srv.Close()
	call := func(method, path string, in any) (int, string) {
		t.Helper()
		body, _ := json.Marshal(in)
		r, err := http.NewRequest(method, srv.URL+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Authorization", "Bearer user:alice")
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	want := func(what string, code int, body string, wantCode int, wantMsg string) {
		t.Helper()
		if code != wantCode || !strings.Contains(body, wantMsg) || strings.Count(strings.TrimSpace(body), "\n") > 0 {
			t.Errorf("%s: got %d %q, want %d with one line containing %q", what, code, body, wantCode, wantMsg)
		}
	}
	p1, p2, p3 := newKey(t), newKey(t), newKey(t)
	k1, k2 := p1.PublicKey().String(), p2.PublicKey().String()
	alice := bearer("alice")
	for _, k := range []tunnel.Key{p1, p2, p1} {
		code, body := call(http.MethodPost, "/v1/register", regReq(t, c, alice, k))
		want("register "+k.String()[:4], code, body, http.StatusOK, "")
	}
	code, body := call(http.MethodPost, "/v1/register", regReq(t, c, alice, p3))
	want("third registration", code, body, http.StatusTooManyRequests, "the gateway already has 2 workstations registered, its cap")

	icpt := func(pub, svc string) api.InterceptRequest {
		return api.InterceptRequest{PublicKey: pub, Namespace: "ns", Service: svc, Workload: api.Workload{Namespace: "ns", Kind: "Deployment", Name: svc}, Port: 8080, Holder: "h"}
	}
	for _, svc := range []string{"a", "b", "a"} {
		code, body := call(http.MethodPost, "/v1/intercepts", icpt(k1, svc))
		want("intercept "+svc, code, body, http.StatusOK, "")
	}
	code, body = call(http.MethodPost, "/v1/intercepts", icpt(k1, "c"))
	want("third intercept", code, body, http.StatusTooManyRequests, "intercept ns/c: limit reached: this workstation already holds 2 intercepts")
	code, body = call(http.MethodPost, "/v1/intercepts", icpt(k2, "c"))
	want("another workstation's intercept", code, body, http.StatusOK, "")
	code, body = call(http.MethodDelete, "/v1/intercepts", api.LeaveRequest{PublicKey: k1, Namespace: "ns", Service: "a"})
	want("leave a", code, body, http.StatusOK, "")
	code, body = call(http.MethodPost, "/v1/intercepts", icpt(k1, "d"))
	want("intercept after a leave", code, body, http.StatusOK, "")
}
