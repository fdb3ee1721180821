package agent

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bridgetun/bridgetun/tunnel"
)

type fakePeers struct {
	peers map[tunnel.Key]tunnel.PeerConfig
	hs    map[tunnel.Key]time.Time
}

func (f *fakePeers) AddPeer(p tunnel.PeerConfig) error { f.peers[p.PublicKey] = p; return nil }
func (f *fakePeers) RemovePeer(k tunnel.Key) error     { delete(f.peers, k); return nil }
func (f *fakePeers) Status() ([]tunnel.PeerStatus, error) {
	var out []tunnel.PeerStatus
	for k := range f.peers {
		out = append(out, tunnel.PeerStatus{PublicKey: k, LastHandshake: f.hs[k]})
	}
	return out, nil
}

func newTestControl(t *testing.T) (*Control, *fakePeers, *time.Time) {
	t.Helper()
	gwKey, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	fp := &fakePeers{peers: map[tunnel.Key]tunnel.PeerConfig{}, hs: map[tunnel.Key]time.Time{}}
	now := time.Unix(1_800_000_000, 0)
	c := NewControl(ControlConfig{Gateway: fp, GatewayKey: gwKey, ClusterDNS: "10.96.0.10", TTL: time.Minute, Now: func() time.Time { return now },
		Auth: fakeAuth{}, Authz: fakeAuthz{}})
	return c, fp, &now
}

func TestRegisterAddressIsStableAndUnique(t *testing.T) {
	c, fp, _ := newTestControl(t)
	seen := map[string]bool{}
	old := maxPeersPerIdentity
	maxPeersPerIdentity = 1000
	t.Cleanup(func() { maxPeersPerIdentity = old })
	alice := bearer("alice")
	for range 200 {
		priv := newKey(t)
		k := priv.PublicKey()
		r1, err := c.Register(alice, regReq(t, c, alice, priv))
		if err != nil {
			t.Fatal(err)
		}
		r2, err := c.Register(alice, regReq(t, c, alice, priv))
		if err != nil {
			t.Fatal(err)
		}
		if r1.Address != r2.Address {
			t.Fatalf("re-register: got %s then %s, want the same address", r1.Address, r2.Address)
		}
		if seen[r1.Address] {
			t.Fatalf("address %s handed out twice", r1.Address)
		}
		seen[r1.Address] = true
		p := netip.MustParsePrefix(r1.Address)
		if !api.TunnelNetwork.Contains(p.Addr()) || p.Addr() == api.GatewayTunnelAddr || p.Bits() != 32 {
			t.Fatalf("address %s: want a /32 inside %s other than the gateway's", r1.Address, api.TunnelNetwork)
		}
		if got := fp.peers[k].AllowedIPs; len(got) != 1 || got[0] != p {
			t.Fatalf("peer allowed IPs: got %v, want [%s]", got, p)
		}
	}
	// A fresh control API (gateway restart) derives the same address for the same key.
	priv := newKey(t)
	c2, _, _ := newTestControl(t)
	a, _ := c.Register(alice, regReq(t, c, alice, priv))
	b, _ := c2.Register(alice, regReq(t, c2, alice, priv))
	if a.Address != b.Address {
		t.Errorf("after restart: got %s, want %s", b.Address, a.Address)
	}
}

func TestRegisterRejectsBadKeys(t *testing.T) {
	c, _, _ := newTestControl(t)
	for _, tc := range []struct{ name, key string }{
		{"empty", ""},
		{"not base64", "!!!"},
		{"short", "AAAA"},
		{"gateway's own", c.info.GatewayPublicKey},
	} {
		if _, err := c.Register(bearer("alice"), api.RegisterRequest{PublicKey: tc.key}); err == nil {
			t.Errorf("%s: got nil error, want a rejection", tc.name)
		}
	}
}

func TestExpireForgetsSilentPeers(t *testing.T) {
	c, fp, now := newTestControl(t)
	quietPriv, chattyPriv := newKey(t), newKey(t)
	quiet, chatty := quietPriv.PublicKey(), chattyPriv.PublicKey()
	for _, k := range []tunnel.Key{quietPriv, chattyPriv} {
		if _, err := c.Register(bearer("alice"), regReq(t, c, bearer("alice"), k)); err != nil {
			t.Fatal(err)
		}
	}
	*now = now.Add(50 * time.Second)
	fp.hs[chatty] = *now // handshakes count as activity
	*now = now.Add(30 * time.Second)
	c.Expire()
	if _, ok := fp.peers[quiet]; ok {
		t.Errorf("quiet peer: still present after TTL, want removed")
	}
	if _, ok := fp.peers[chatty]; !ok {
		t.Errorf("chatty peer: removed, want kept (handshake 30s ago, TTL 1m)")
	}
}

// TestExpireDropsDestinationGrant: an expired peer's --allow-api-server
// grant goes with it, so nothing at its old address keeps it.
func TestExpireDropsDestinationGrant(t *testing.T) {
	c, _, now := newTestControl(t)
	apiSrv := netip.MustParseAddrPort("10.96.0.1:443")
	c.policy = NewPolicy(PolicyConfig{ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}, APIServer: []netip.AddrPort{apiSrv}})
	req := regReq(t, c, bearer("alice"), newKey(t))
	req.AllowAPIServer = true
	rr, err := c.Register(bearer("alice"), req)
	if err != nil {
		t.Fatal(err)
	}
	src := netip.AddrPortFrom(netip.MustParsePrefix(rr.Address).Addr(), 40000)
	if _, ok := c.policy.Allow(src, apiSrv, "tcp"); !ok {
		t.Fatal("registered with --allow-api-server: the API server is refused")
	}
	*now = now.Add(2 * time.Minute)
	c.Expire()
	if _, ok := c.policy.Allow(src, apiSrv, "tcp"); ok {
		t.Error("after the peer expired its address still reaches the API server")
	}
}

func TestPeersGauge(t *testing.T) {
	reg := prometheus.NewRegistry()
	gwKey, _ := tunnel.GenerateKey()
	fp := &fakePeers{peers: map[tunnel.Key]tunnel.PeerConfig{}, hs: map[tunnel.Key]time.Time{}}
	c := NewControl(ControlConfig{Gateway: fp, GatewayKey: gwKey, Registerer: reg, Auth: fakeAuth{}})
	for range 3 {
		if _, err := c.Register(bearer("alice"), regReq(t, c, bearer("alice"), newKey(t))); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := testutil.GatherAndCount(reg, "bridgetun_gateway_peers"); err != nil || got != 1 {
		t.Fatalf("gather: %d, %v", got, err)
	}
	mfs, _ := reg.Gather()
	if v := mfs[0].GetMetric()[0].GetGauge().GetValue(); v != 3 {
		t.Errorf("bridgetun_gateway_peers: got %v, want 3", v)
	}
}

func TestControlHTTP(t *testing.T) {
	c, _, _ := newTestControl(t)
	srv := httptest.NewServer(c)
	defer srv.Close()
	req := regReq(t, c, bearer("alice"), newKey(t))
	req.Version = "test"
	body, _ := json.Marshal(req)
	resp, err := postAs(srv.URL+"/v1/register", "user:alice", body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rr api.RegisterResponse
	if err := json.NewDecoder(resp.Body).Decode(&rr); err != nil || resp.StatusCode != 200 {
		t.Fatalf("register: status %d err %v", resp.StatusCode, err)
	}
	if rr.ClusterDNS != "10.96.0.10" || rr.ClusterDomain != "cluster.local" || rr.GatewayAddress != api.GatewayTunnelAddr.String() || rr.TTLSeconds != 60 || rr.User != "alice" {
		t.Errorf("register response: got %+v", rr)
	}
	resp2, err := postAs(srv.URL+"/v1/register", "user:alice", []byte("{"))
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusBadRequest {
		t.Errorf("bad JSON: got status %d, want 400", resp2.StatusCode)
	}
}

// TestControlAfterForgetting: a workstation the gateway forgot (silent past
// the TTL) learns it from its next renewal (unknown_peer) and from adding an
// intercept (412); registering again says admitted, so it re-keys.
func TestControlAfterForgetting(t *testing.T) {
	c, _, now := newTestControl(t)
	c.icpt = NewIntercepts(0, func() time.Time { return *now })
	srv := httptest.NewServer(c)
	defer srv.Close()
	priv := newKey(t)
	k := priv.PublicKey().String()
	post := func(path string, in, out any) int {
		t.Helper()
		body, _ := json.Marshal(in)
		resp, err := postAs(srv.URL+path, "user:alice", body)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if out != nil && resp.StatusCode == 200 {
			if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode
	}
	register := func() api.RegisterResponse {
		var rr api.RegisterResponse
		if code := post("/v1/register", regReq(t, c, bearer("alice"), priv), &rr); code != 200 {
			t.Fatalf("register: got %d", code)
		}
		return rr
	}
	renew := func() api.RenewResponse {
		var rr api.RenewResponse
		if code := post("/v1/intercepts/renew", api.RenewRequest{PublicKey: k}, &rr); code != 200 {
			t.Fatalf("renew: got %d", code)
		}
		return rr
	}
	if !register().Admitted {
		t.Error("first registration: want admitted")
	}
	if renew().UnknownPeer {
		t.Error("renew of a registered peer: got unknown_peer")
	}
	*now = now.Add(2 * time.Minute) // past the 1-minute TTL
	c.Expire()
	if !renew().UnknownPeer {
		t.Error("renew of a forgotten peer: want unknown_peer")
	}
	ir := api.InterceptRequest{PublicKey: k, Namespace: "ns", Service: "api", Workload: apiW, Port: 8080}
	if code := post("/v1/intercepts", ir, nil); code != http.StatusPreconditionFailed {
		t.Errorf("add for a forgotten peer: got %d, want 412", code)
	}
	if !register().Admitted {
		t.Error("registering a forgotten key again: want admitted")
	}
	if register().Admitted {
		t.Error("a renewal of a known key: got admitted")
	}
}

// postAs POSTs body with a bearer token.
func postAs(url, token string, body []byte) (*http.Response, error) {
	r, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	r.Header.Set("Authorization", "Bearer "+token)
	return http.DefaultClient.Do(r)
}
