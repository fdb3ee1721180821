package agent

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bridgetun/bridgetun/tunnel"
)

// bytesPeers is fakePeers whose status carries per-peer byte counters.
type bytesPeers struct {
	*fakePeers
	rx, tx map[tunnel.Key]uint64
}

func (b bytesPeers) Status() ([]tunnel.PeerStatus, error) {
	st, _ := b.fakePeers.Status()
	for i := range st {
		st[i].RxBytes, st[i].TxBytes = b.rx[st[i].PublicKey], b.tx[st[i].PublicKey]
	}
	return st, nil
}

// TestHolderSeries: the gateway's per-developer series sum each holder's
// workstations (bytes, peers, youngest handshake), count admitted flows
// and relay hits/misses by the owner of the tunnel address, and keep the
// holder label bounded: past the cap, developers share "other".
func TestHolderSeries(t *testing.T) {
	old := maxHolderLabels
	maxHolderLabels = 2
	t.Cleanup(func() { maxHolderLabels = old })
	gwKey, _ := tunnel.GenerateKey()
	now := time.Unix(1_800_000_000, 0)
	peers := bytesPeers{fakePeers: &fakePeers{peers: map[tunnel.Key]tunnel.PeerConfig{}, hs: map[tunnel.Key]time.Time{}},
		rx: map[tunnel.Key]uint64{}, tx: map[tunnel.Key]uint64{}}
	reg := prometheus.NewRegistry()
	h := NewHolders(reg)
	c := NewControl(ControlConfig{Gateway: peers, GatewayKey: gwKey, Auth: fakeAuth{}, Registerer: reg, Holders: h, Now: func() time.Time { return now }})
	addrOf := map[string][]netip.Addr{}
	for i, user := range []string{"alice", "alice", "bob", "carol"} {
		priv := newKey(t)
		rr, err := c.Register(bearer(user), regReq(t, c, bearer(user), priv))
		if err != nil {
			t.Fatal(err)
		}
		pub := priv.PublicKey()
		peers.rx[pub], peers.tx[pub] = uint64(100*(i+1)), uint64(10*(i+1))
		peers.hs[pub] = now.Add(-time.Duration(i+1) * time.Second)
		addrOf[user] = append(addrOf[user], netip.MustParsePrefix(rr.Address).Addr())
	}
	want := `
# HELP bridgetun_gateway_holder_bytes_total Tunnel bytes of a developer's registered workstations, by holder and direction (rx: from the workstation, tx: to it); a peer that expires takes its bytes with it.
# TYPE bridgetun_gateway_holder_bytes_total counter
bridgetun_gateway_holder_bytes_total{direction="rx",holder="alice"} 300
bridgetun_gateway_holder_bytes_total{direction="rx",holder="bob"} 300
bridgetun_gateway_holder_bytes_total{direction="rx",holder="other"} 400
bridgetun_gateway_holder_bytes_total{direction="tx",holder="alice"} 30
bridgetun_gateway_holder_bytes_total{direction="tx",holder="bob"} 30
bridgetun_gateway_holder_bytes_total{direction="tx",holder="other"} 40
# HELP bridgetun_gateway_holder_peers Registered workstations per holder.
# TYPE bridgetun_gateway_holder_peers gauge
bridgetun_gateway_holder_peers{holder="alice"} 2
bridgetun_gateway_holder_peers{holder="bob"} 1
bridgetun_gateway_holder_peers{holder="other"} 1
# HELP bridgetun_gateway_holder_handshake_age_seconds Seconds since the youngest WireGuard handshake among a holder's workstations (absent: none yet).
# TYPE bridgetun_gateway_holder_handshake_age_seconds gauge
bridgetun_gateway_holder_handshake_age_seconds{holder="alice"} 1
bridgetun_gateway_holder_handshake_age_seconds{holder="bob"} 3
bridgetun_gateway_holder_handshake_age_seconds{holder="other"} 4
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "bridgetun_gateway_holder_bytes_total", "bridgetun_gateway_holder_peers", "bridgetun_gateway_holder_handshake_age_seconds"); err != nil {
		t.Error(err)
	}

	allow := policyHook(NewPolicy(PolicyConfig{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}), h, nil)
	dst := netip.MustParseAddrPort("10.244.0.9:80")
	for _, src := range []netip.Addr{addrOf["alice"][0], addrOf["alice"][1], addrOf["bob"][0]} {
		if _, ok := allow(netip.AddrPortFrom(src, 40000), dst, "tcp"); !ok {
			t.Fatalf("flow from %s refused", src)
		}
	}
	if _, ok := allow(netip.AddrPortFrom(addrOf["bob"][0], 40000), netip.MustParseAddrPort("169.254.169.254:80"), "tcp"); ok {
		t.Fatal("metadata address admitted")
	}
	h.Relayed(netip.AddrPortFrom(addrOf["bob"][0], 8080).String(), true)
	h.Relayed(netip.AddrPortFrom(addrOf["carol"][0], 8080).String(), false)
	want = `
# HELP bridgetun_gateway_holder_flows_total New flows the destination policy admitted from a developer's workstations, by holder (verified user name) and protocol.
# TYPE bridgetun_gateway_holder_flows_total counter
bridgetun_gateway_holder_flows_total{holder="alice",proto="tcp"} 2
bridgetun_gateway_holder_flows_total{holder="bob",proto="tcp"} 1
# HELP bridgetun_gateway_holder_relay_total Sidecar connections relayed to a developer's intercepts, by holder and result (hit: delivered, miss: the workstation did not answer).
# TYPE bridgetun_gateway_holder_relay_total counter
bridgetun_gateway_holder_relay_total{holder="bob",result="hit"} 1
bridgetun_gateway_holder_relay_total{holder="other",result="miss"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "bridgetun_gateway_holder_flows_total", "bridgetun_gateway_holder_relay_total"); err != nil {
		t.Error(err)
	}
}
