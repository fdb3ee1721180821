package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/tunnel"
)

// fakeAuth accepts a bearer token "user:NAME" as NAME, and an identity CSR
// named "csr-NAME" with secret "s-NAME" as NAME; anything else is refused,
// as the API server would.
type fakeAuth struct{}

func (fakeAuth) AuthenticateToken(_ context.Context, token string, _ []string) (Identity, error) {
	if name, ok := cutPrefix(token, "user:"); ok && name != "" {
		return Identity{User: name}, nil
	}
	return Identity{}, fmt.Errorf("%w: token not accepted", ErrUnauthenticated)
}

func (fakeAuth) AuthenticateCSR(_ context.Context, csr, secret string) (Identity, error) {
	if name, ok := cutPrefix(csr, "csr-"); ok && secret == "s-"+name {
		return Identity{User: name}, nil
	}
	return Identity{}, fmt.Errorf("%w: CSR not accepted", ErrUnauthenticated)
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

// fakeAuthz allows everything except the users it lists.
// fakeAuthz denies a user everything (deny["bob"]) or one verb
// (deny["bob:update"]).
type fakeAuthz struct{ deny map[string]bool }

func (f fakeAuthz) Allowed(_ context.Context, id Identity, a Access) (bool, error) {
	return !f.deny[id.User] && !f.deny[id.User+":"+a.Verb], nil
}

// bearer is the caller a bearer token "user:NAME" makes.
func bearer(name string) Caller {
	sum := sha256.Sum256([]byte("user:" + name))
	return Caller{Identity: Identity{User: name}, Binding: sum[:]}
}

// regReq is a registration of priv's public key with a proof for who.
func regReq(t *testing.T, c *Control, who Caller, priv tunnel.Key) api.RegisterRequest {
	t.Helper()
	proof, err := tunnel.RegistrationProof(priv, c.pub, who.Binding)
	if err != nil {
		t.Fatal(err)
	}
	return api.RegisterRequest{PublicKey: priv.PublicKey().String(), Proof: base64.StdEncoding.EncodeToString(proof)}
}

func newKey(t *testing.T) tunnel.Key {
	t.Helper()
	k, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestControlIdentity: every call but /v1/info needs a verified identity;
// a key is registered only with a proof made by its private part for the
// caller's own credential; another identity can neither list keys nor
// renew, end or take over an intercept, except by --force with the right
// to update the workload.
func TestControlIdentity(t *testing.T) {
	c, _, now := newTestControl(t)
	c.icpt = NewIntercepts(0, func() time.Time { return *now })
	authz := fakeAuthz{deny: map[string]bool{}}
	c.authz = authz
	srv := httptest.NewServer(c)
	defer srv.Close()
	call := func(method, path string, hdr map[string]string, in any) (int, string) {
		t.Helper()
		var body io.Reader
		if in != nil {
			b, _ := json.Marshal(in)
			body = bytes.NewReader(b)
		}
		r, _ := http.NewRequest(method, srv.URL+path, body)
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	as := func(name string) map[string]string { return map[string]string{"Authorization": "Bearer user:" + name} }
	want := func(what string, code int, body string, wantCode int, wantMsg string) {
		t.Helper()
		if code != wantCode || !strings.Contains(body, wantMsg) || strings.Contains(body, "\n") {
			t.Errorf("%s: got %d %q, want %d with one line containing %q", what, code, body, wantCode, wantMsg)
		}
	}

	code, body := call(http.MethodGet, "/v1/info", nil, nil)
	want("info without identity", code, body, http.StatusOK, c.info.GatewayPublicKey)
	alicePriv, bobPriv := newKey(t), newKey(t)
	aliceKey, bobKey := alicePriv.PublicKey().String(), bobPriv.PublicKey().String()
	alice, bob := bearer("alice"), bearer("bob")
	code, body = call(http.MethodPost, "/v1/register", nil, regReq(t, c, alice, alicePriv))
	want("register without a credential", code, body, http.StatusUnauthorized, "no credential")
	code, body = call(http.MethodPost, "/v1/register", map[string]string{"Authorization": "Bearer forged"}, regReq(t, c, alice, alicePriv))
	want("register with a token the API server refuses", code, body, http.StatusUnauthorized, "could not be verified")
	code, body = call(http.MethodGet, "/v1/intercepts", nil, nil)
	want("list without a credential", code, body, http.StatusUnauthorized, "no credential")

	// Bob cannot register Alice's key: her proof is bound to her
	// credential, and he cannot make one without her private key.
	code, body = call(http.MethodPost, "/v1/register", as("bob"), regReq(t, c, alice, alicePriv))
	want("bob replays alice's proof", code, body, http.StatusForbidden, "registration proof does not match")
	forged := regReq(t, c, bob, bobPriv)
	forged.PublicKey = aliceKey
	code, body = call(http.MethodPost, "/v1/register", as("bob"), forged)
	want("bob's proof for alice's key", code, body, http.StatusForbidden, "registration proof does not match")
	code, body = call(http.MethodPost, "/v1/register", as("bob"), api.RegisterRequest{PublicKey: bobKey})
	want("no proof", code, body, http.StatusForbidden, "no valid proof")

	code, body = call(http.MethodPost, "/v1/register", as("alice"), regReq(t, c, alice, alicePriv))
	want("alice registers", code, body, http.StatusOK, `"user":"alice"`)
	code, body = call(http.MethodPost, "/v1/register", as("bob"), regReq(t, c, bob, bobPriv))
	want("bob registers", code, body, http.StatusOK, `"user":"bob"`)

	full := api.InterceptRequest{PublicKey: aliceKey, Namespace: "ns", Service: "api", Workload: apiW, Port: 8080, Holder: "mallory", Label: "laptop"}
	code, body = call(http.MethodPost, "/v1/intercepts", as("alice"), full)
	want("alice intercepts", code, body, http.StatusOK, `"holder":"alice (laptop)"`)
	var aliceIt api.Intercept
	_ = json.Unmarshal([]byte(body), &aliceIt)

	// Listings: Bob sees who holds what, never Alice's key or target.
	code, body = call(http.MethodGet, "/v1/intercepts?namespace=ns", as("bob"), nil)
	want("bob lists", code, body, http.StatusOK, `"holder":"alice (laptop)"`)
	if strings.Contains(body, aliceKey) || strings.Contains(body, aliceIt.Target) || strings.Contains(body, `"mine":true`) {
		t.Errorf("bob's listing shows alice's key, target or claims it is his: %s", body)
	}
	code, body = call(http.MethodGet, "/v1/intercepts?namespace=ns", as("alice"), nil)
	want("alice lists", code, body, http.StatusOK, `"mine":true`)

	// Bob cannot end, renew or replace Alice's intercept with her key.
	code, body = call(http.MethodDelete, "/v1/intercepts", as("bob"), api.LeaveRequest{PublicKey: aliceKey, Namespace: "ns", Service: "api"})
	want("bob ends alice's intercept", code, body, http.StatusForbidden, "belongs to alice")
	code, body = call(http.MethodPost, "/v1/intercepts/renew", as("bob"), api.RenewRequest{PublicKey: aliceKey, IDs: []string{aliceIt.ID}})
	want("bob renews alice's intercept", code, body, http.StatusForbidden, "belongs to alice")
	hijack := full
	hijack.Port = 22
	code, body = call(http.MethodPost, "/v1/intercepts", as("bob"), hijack)
	want("bob re-adds alice's intercept at port 22", code, body, http.StatusForbidden, "belongs to alice")

	// With his own key: a conflict naming Alice; --force needs the right
	// to update the workload.
	mine := full
	mine.PublicKey, mine.Label = bobKey, ""
	code, body = call(http.MethodPost, "/v1/intercepts", as("bob"), mine)
	want("bob intercepts the same service", code, body, http.StatusConflict, "intercepted by alice (laptop)")
	authz.deny["bob:update"] = true // may intercept, may not edit the workload
	mine.Force = true
	code, body = call(http.MethodPost, "/v1/intercepts", as("bob"), mine)
	want("bob forces without the right", code, body, http.StatusForbidden, "bob may not update deployment ns/api")
	if tab := c.icpt.Table("ns", "api"); len(tab.Routes) != 1 || tab.Routes[0].Holder != "alice (laptop)" {
		t.Errorf("after refused force: routes %+v, want alice's only", tab.Routes)
	}
	delete(authz.deny, "bob:update")
	code, body = call(http.MethodPost, "/v1/intercepts", as("bob"), mine)
	want("bob forces with the right", code, body, http.StatusOK, `"holder":"bob"`)
	code, body = call(http.MethodPost, "/v1/intercepts/renew", as("alice"), api.RenewRequest{PublicKey: aliceKey, IDs: []string{aliceIt.ID}})
	want("alice renews after the takeover", code, body, http.StatusOK, `"unknown":["`+aliceIt.ID+`"]`)

	// The identity-CSR path, for kubeconfigs without a bearer token.
	carolPriv := newKey(t)
	sum := sha256.Sum256([]byte("s-carol"))
	carol := Caller{Identity: Identity{User: "carol"}, Binding: sum[:]}
	code, body = call(http.MethodPost, "/v1/register", map[string]string{api.IdentityCSRHeader: "csr-carol", api.IdentitySecretHeader: "s-carol"}, regReq(t, c, carol, carolPriv))
	want("carol registers with an identity CSR", code, body, http.StatusOK, `"user":"carol"`)
	code, body = call(http.MethodPost, "/v1/register", map[string]string{api.IdentityCSRHeader: "csr-carol", api.IdentitySecretHeader: "s-bob"}, regReq(t, c, carol, carolPriv))
	want("carol's CSR with a wrong secret", code, body, http.StatusUnauthorized, "could not be verified")
}

// TestControlCapsPerIdentity: one identity may register at most
// maxPeersPerIdentity keys; others are not affected.
func TestControlCapsPerIdentity(t *testing.T) {
	old := maxPeersPerIdentity
	maxPeersPerIdentity = 2
	t.Cleanup(func() { maxPeersPerIdentity = old })
	c, _, _ := newTestControl(t)
	alice := bearer("alice")
	for range 2 {
		if _, err := c.Register(alice, regReq(t, c, alice, newKey(t))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Register(alice, regReq(t, c, alice, newKey(t))); err == nil || !strings.Contains(err.Error(), "alice already has 2 workstation keys registered") {
		t.Errorf("third key of alice: got %v, want the per-identity cap", err)
	}
	if _, err := c.Register(bearer("bob"), regReq(t, c, bearer("bob"), newKey(t))); err != nil {
		t.Errorf("bob's first key: %v", err)
	}
}
