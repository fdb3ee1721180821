package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/bridgetun/bridgetun/tunnel"
)

// Fixed keys, so seeds can carry valid proofs and alice's key.
var (
	fuzzGatewayKey = fixedKey(1)
	fuzzAliceKey   = fixedKey(2)
	fuzzBobKey     = fixedKey(3)
)

func fixedKey(b byte) tunnel.Key {
	var k tunnel.Key
	for i := range k {
		k[i] = b
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k
}

// onlyAlice lets alice alone update workloads.
type onlyAlice struct{}

func (onlyAlice) Allowed(_ context.Context, id Identity, _ Access) (bool, error) {
	return id.User == "alice", nil
}

// FuzzControl sends arbitrary HTTP requests to the control API of a
// gateway where alice holds an intercept of ns/api (the fake API server of
// identity_test.go: "Bearer user:NAME" is NAME, only alice may update
// workloads). Invariants: no answer is a server error; without a
// credential the API server accepts, nothing but GET /v1/info succeeds; a
// caller other than alice never ends, renews away or replaces her
// intercept and never sees her key or target; a JSON answer decodes.
func FuzzControl(f *testing.F) {
	alicePub, bobPub := fuzzAliceKey.PublicKey().String(), fuzzBobKey.PublicKey().String()
	proof := func(priv tunnel.Key, user string) string {
		p, err := tunnel.RegistrationProof(priv, fuzzGatewayKey.PublicKey(), bearer(user).Binding)
		if err != nil {
			f.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(p)
	}
	aliceID := interceptID(alicePub, "ns", "api")
	rq := func(method, path, user string, body any) []byte {
		var b []byte
		if body != nil {
			b, _ = json.Marshal(body)
		}
		s := method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
		if user != "" {
			s += "Authorization: Bearer user:" + user + "\r\n"
		}
		if b != nil {
			s += "Content-Type: application/json\r\nContent-Length: " + itoa(len(b)) + "\r\n"
		}
		return append([]byte(s+"\r\n"), b...)
	}
	full := api.InterceptRequest{PublicKey: alicePub, Namespace: "ns", Service: "api", Workload: apiW, Port: 8080, Label: "laptop"}
	hijack := full
	hijack.Port, hijack.Force = 22, true
	bobs := full
	bobs.PublicKey, bobs.Force, bobs.Label = bobPub, true, ""
	testkit.Seeds(f,
		rq("GET", "/v1/info", "", nil),
		rq("POST", "/v1/register", "bob", api.RegisterRequest{PublicKey: bobPub, Proof: proof(fuzzBobKey, "bob"), Version: "v1"}),
		rq("POST", "/v1/register", "bob", api.RegisterRequest{PublicKey: alicePub, Proof: proof(fuzzAliceKey, "alice")}),
		rq("POST", "/v1/register", "bob", api.RegisterRequest{PublicKey: bobPub}),
		rq("POST", "/v1/register", "", api.RegisterRequest{PublicKey: bobPub, Proof: proof(fuzzBobKey, "bob")}),
		rq("POST", "/v1/register", "alice", api.RegisterRequest{PublicKey: fuzzGatewayKey.PublicKey().String()}),
		rq("GET", "/v1/intercepts?namespace=ns", "bob", nil),
		rq("GET", "/v1/intercepts?namespace=ns", "alice", nil),
		rq("GET", "/v1/intercepts", "", nil),
		rq("POST", "/v1/intercepts", "alice", full),
		rq("POST", "/v1/intercepts", "bob", hijack),
		rq("POST", "/v1/intercepts", "bob", bobs),
		rq("DELETE", "/v1/intercepts", "bob", api.LeaveRequest{PublicKey: alicePub, Namespace: "ns", Service: "api"}),
		rq("DELETE", "/v1/intercepts", "alice", api.LeaveRequest{PublicKey: alicePub, Namespace: "ns", Service: "api"}),
		rq("POST", "/v1/intercepts/renew", "bob", api.RenewRequest{PublicKey: alicePub, IDs: []string{aliceID}}),
		rq("POST", "/v1/intercepts/renew", "alice", api.RenewRequest{PublicKey: alicePub, IDs: []string{aliceID, "nope"}}),
		[]byte("POST /v1/register HTTP/1.1\r\nHost: x\r\n"+api.IdentityCSRHeader+": csr-bob\r\n"+api.IdentitySecretHeader+": s-bob\r\nContent-Length: 2\r\n\r\n{}"),
		[]byte("POST /v1/intercepts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer user:bob\r\nContent-Length: 9\r\n\r\n{\"port\":"),
		[]byte("POST /v1/intercepts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer user:bob\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n"),
		[]byte("PUT /v1/intercepts/../register HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer user:bob\r\n\r\n"),
		[]byte("GET /v1/interceptsX HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \r\n\r\n"),
	)
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return // net/http's own parser refuses it before the handler
		}
		r.RemoteAddr = "127.0.0.1:40000"
		c := newFuzzControl(t)
		before := c.icpt.Table("ns", "api")
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, r)
		status, body := rec.Code, rec.Body.String()

		if status >= 500 && status != http.StatusNotImplemented {
			t.Fatalf("%s %s: server error %d %q", r.Method, r.URL, status, body)
		}
		caller := fuzzCaller(r)
		if caller == "" && status == http.StatusOK && (r.URL.Path != "/v1/info" || r.Method != http.MethodGet) {
			t.Fatalf("%s %s without an accepted credential: got 200 %q", r.Method, r.URL, body)
		}
		if caller != "alice" {
			after := c.icpt.Table("ns", "api")
			if len(after.Routes) != 1 || after.Routes[0] != before.Routes[0] {
				t.Fatalf("%q (caller %q) changed alice's route: %+v, was %+v", in, caller, after.Routes, before.Routes)
			}
			if strings.Contains(body, alicePub) || strings.Contains(body, before.Routes[0].Target) {
				t.Fatalf("%q (caller %q) was shown alice's key or target: %q", in, caller, body)
			}
		}
		if status == http.StatusOK && strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %s: invalid JSON answer %q", r.Method, r.URL, body)
		}
	})
}

// newFuzzControl is a control API (fixed gateway key, the fake API server)
// where alice has registered her key and intercepts ns/api.
func newFuzzControl(t *testing.T) *Control {
	t.Helper()
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	c := NewControl(ControlConfig{
		Gateway:    &fakePeers{peers: map[tunnel.Key]tunnel.PeerConfig{}, hs: map[tunnel.Key]time.Time{}},
		GatewayKey: fuzzGatewayKey, ClusterDNS: "10.96.0.10", TTL: time.Minute, Now: clock,
		Auth: fakeAuth{}, Authz: onlyAlice{}, Intercepts: NewIntercepts(0, clock),
	})
	alice := bearer("alice")
	proof, err := tunnel.RegistrationProof(fuzzAliceKey, fuzzGatewayKey.PublicKey(), alice.Binding)
	if err != nil {
		t.Fatal(err)
	}
	pub := fuzzAliceKey.PublicKey().String()
	if _, err := c.Register(alice, api.RegisterRequest{PublicKey: pub, Proof: base64.StdEncoding.EncodeToString(proof)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddIntercept(context.Background(), alice, api.InterceptRequest{PublicKey: pub, Namespace: "ns", Service: "api", Workload: apiW, Port: 8080, Label: "laptop"}); err != nil {
		t.Fatal(err)
	}
	return c
}

// fuzzCaller is who the fake API server says sent r ("" = nobody), as
// Control.authenticate reads the credential.
func fuzzCaller(r *http.Request) string {
	if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && token != "" {
		id, err := fakeAuth{}.AuthenticateToken(context.Background(), token, nil)
		if err != nil {
			return ""
		}
		return id.User
	}
	if csr := r.Header.Get(api.IdentityCSRHeader); csr != "" {
		id, err := fakeAuth{}.AuthenticateCSR(context.Background(), csr, r.Header.Get(api.IdentitySecretHeader))
		if err != nil {
			return ""
		}
		return id.User
	}
	return ""
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
