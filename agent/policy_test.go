package agent

import (
	"net/netip"
	"testing"

	"github.com/bridgetun/bridgetun/agent/api"
)

// TestPolicy is the destination policy as a table: each row a flow from
// peer A (registered with --also-proxy 10.50.0.0/16) or peer B (registered
// with --allow-api-server), and what the gateway does with it.
func TestPolicy(t *testing.T) {
	peerA, peerB := netip.MustParseAddr("198.19.1.10"), netip.MustParseAddr("198.19.2.20")
	unknown := netip.MustParseAddr("198.19.3.30") // a peer with no grant recorded
	p := NewPolicy(PolicyConfig{
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")},
		NodeIP:       netip.MustParseAddr("172.18.0.3"),
		APIServer:    []netip.AddrPort{netip.MustParseAddrPort("10.96.0.1:443"), netip.MustParseAddrPort("172.18.0.2:6443")},
	})
	grantA, err := ParseGrant(api.RegisterRequest{AlsoProxy: []string{"10.50.0.0/16", "172.18.0.0/24"}})
	if err != nil {
		t.Fatal(err)
	}
	p.SetPeer(peerA, grantA)
	p.SetPeer(peerB, PeerGrant{AllowAPIServer: true})

	tests := []struct {
		name       string
		src        netip.Addr
		dst, proto string
		want       string // "" = allowed
	}{
		{"aws imds v4", peerA, "169.254.169.254:80", "tcp", ReasonMetadata},
		{"aws imds v6", peerA, "[fd00:ec2::254]:80", "tcp", ReasonMetadata},
		{"aws ecs task credentials", peerA, "169.254.170.2:80", "tcp", ReasonMetadata},
		{"aws eks pod identity v4", peerA, "169.254.170.23:80", "tcp", ReasonMetadata},
		{"aws eks pod identity v6", peerA, "[fd00:ec2::23]:80", "tcp", ReasonMetadata},
		{"gcp v6", peerA, "[fd20:ce::254]:80", "tcp", ReasonMetadata},
		{"azure wireserver", peerA, "168.63.129.16:80", "tcp", ReasonMetadata},
		{"azure wireserver udp dns", peerA, "168.63.129.16:53", "udp", ReasonMetadata},
		{"alibaba", peerA, "100.100.100.200:80", "tcp", ReasonMetadata},
		{"oci v6", peerA, "[fd00:c1::a9fe:a9fe]:80", "tcp", ReasonMetadata},
		{"metadata v4-mapped", peerA, "[::ffff:169.254.169.254]:80", "tcp", ReasonMetadata},
		{"metadata ping", peerA, "169.254.169.254:0", "icmp", ReasonMetadata},
		{"metadata even with allow-api-server", peerB, "169.254.169.254:80", "tcp", ReasonMetadata},

		{"kubelet on the node", peerA, "172.18.0.3:10250", "tcp", ReasonKubelet},
		{"kubelet read-only port on the node", peerA, "172.18.0.3:10255", "tcp", ReasonKubelet},
		{"another port on the node, also-proxied", peerA, "172.18.0.3:30080", "tcp", ""},
		{"kubelet on another node, also-proxied", peerA, "172.18.0.4:10250", "tcp", ReasonKubelet},
		{"ping the node, also-proxied", peerA, "172.18.0.3:0", "icmp", ""},
		{"port 10250 of a pod (metrics-server)", peerA, "10.244.1.7:10250", "tcp", ""},
		{"node not also-proxied", peerB, "172.18.0.3:30080", "tcp", ReasonOutside},

		{"api server service", peerA, "10.96.0.1:443", "tcp", ReasonAPIServer},
		{"api server endpoint, also-proxied", peerA, "172.18.0.2:6443", "tcp", ReasonAPIServer},
		{"api server service, allowed", peerB, "10.96.0.1:443", "tcp", ""},
		{"api server endpoint, allowed but not proxied", peerB, "172.18.0.2:6443", "tcp", ReasonOutside},
		{"api server node's other port, also-proxied", peerA, "172.18.0.2:30080", "tcp", ""},
		{"unknown peer gets no grant", unknown, "10.96.0.1:443", "tcp", ReasonAPIServer},

		{"another workstation", peerA, "198.19.2.20:22", "tcp", ReasonPeer},
		{"another workstation udp", peerA, "198.19.2.20:53", "udp", ReasonPeer},
		{"another workstation ping", peerA, "198.19.2.20:0", "icmp", ReasonPeer},
		{"gateway's own address: the stack decides", peerA, "198.19.0.1:53", "udp", ""},

		{"pod", peerA, "10.244.3.4:8080", "tcp", ""},
		{"pod v6", peerA, "[fd00:10:244::5]:8080", "tcp", ""},
		{"service", peerB, "10.96.12.34:80", "tcp", ""},
		{"service udp", peerB, "10.96.0.10:53", "udp", ""},
		{"pod ping", peerB, "10.244.3.4:0", "icmp", ""},
		{"outside", peerA, "93.184.216.34:443", "tcp", ReasonOutside},
		{"outside v6", peerA, "[2606:4700::1]:443", "tcp", ReasonOutside},
		{"also-proxy admitted for its peer", peerA, "10.50.1.2:5432", "tcp", ""},
		{"also-proxy not for another peer", peerB, "10.50.1.2:5432", "tcp", ReasonOutside},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := netip.MustParseAddrPort(tt.dst)
			reason, ok := p.Allow(netip.AddrPortFrom(tt.src, 40000), dst, tt.proto)
			if ok != (tt.want == "") || reason != tt.want {
				t.Errorf("Allow(%s -> %s %s) = %q, %v; want %q, %v", tt.src, dst, tt.proto, reason, ok, tt.want, tt.want == "")
			}
		})
	}
}

// TestPolicyNoCIDRsClosed: a gateway that was not told the cluster's
// CIDRs admits nothing but a peer's --also-proxy ranges.
func TestPolicyNoCIDRsClosed(t *testing.T) {
	p := NewPolicy(PolicyConfig{})
	peer := netip.MustParseAddr("198.19.1.10")
	p.SetPeer(peer, PeerGrant{AlsoProxy: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16")}})
	for dst, want := range map[string]string{"10.96.0.10:53": ReasonOutside, "10.244.0.5:80": ReasonOutside, "10.50.0.1:80": ""} {
		if reason, ok := p.Allow(netip.AddrPortFrom(peer, 1), netip.MustParseAddrPort(dst), "tcp"); reason != want || ok != (want == "") {
			t.Errorf("Allow(%s) = %q, %v; want %q", dst, reason, ok, want)
		}
	}
}

// TestPolicyGrantReplaced: a new registration at the same address (the
// same key with other flags, or a new key given a freed address)
// replaces the grant; RemovePeer forgets it.
func TestPolicyGrantReplaced(t *testing.T) {
	p := NewPolicy(PolicyConfig{ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}, APIServer: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.1:443")}})
	peer, apiSrv := netip.AddrPortFrom(netip.MustParseAddr("198.19.1.10"), 1), netip.MustParseAddrPort("10.96.0.1:443")
	p.SetPeer(peer.Addr(), PeerGrant{AllowAPIServer: true})
	if _, ok := p.Allow(peer, apiSrv, "tcp"); !ok {
		t.Fatal("allow-api-server: API server refused")
	}
	p.SetPeer(peer.Addr(), PeerGrant{})
	if reason, ok := p.Allow(peer, apiSrv, "tcp"); ok || reason != ReasonAPIServer {
		t.Errorf("after re-registering without allow-api-server: %q, %v; want refused as %s", reason, ok, ReasonAPIServer)
	}
	p.SetPeer(peer.Addr(), PeerGrant{AllowAPIServer: true})
	p.RemovePeer(peer.Addr())
	if _, ok := p.Allow(peer, apiSrv, "tcp"); ok {
		t.Errorf("after RemovePeer: API server admitted")
	}
}

func TestParseGrant(t *testing.T) {
	if _, err := ParseGrant(api.RegisterRequest{AlsoProxy: []string{"10.0.0.0/8", "bogus"}}); err == nil {
		t.Error("ParseGrant(bogus): no error")
	}
	g, err := ParseGrant(api.RegisterRequest{AlsoProxy: []string{"10.1.2.3/16"}, AllowAPIServer: true})
	if err != nil || len(g.AlsoProxy) != 1 || g.AlsoProxy[0] != netip.MustParsePrefix("10.1.0.0/16") || !g.AllowAPIServer {
		t.Errorf("ParseGrant = %+v, %v; want 10.1.0.0/16 and the API server", g, err)
	}
}

// TestRegisterRecordsGrant: the control API records what each
// registration asks of the policy for the peer's tunnel address, replaces
// it on the next registration, and refuses a bad --also-proxy before
// admitting anything.
func TestRegisterRecordsGrant(t *testing.T) {
	c, fp, _ := newTestControl(t)
	c.policy = NewPolicy(PolicyConfig{ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}, APIServer: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.1:443")}})
	alice, priv := bearer("alice"), newKey(t)
	req := regReq(t, c, alice, priv)
	req.AlsoProxy, req.AllowAPIServer = []string{"10.50.0.0/16"}, true
	rr, err := c.Register(alice, req)
	if err != nil {
		t.Fatal(err)
	}
	src := netip.AddrPortFrom(netip.MustParsePrefix(rr.Address).Addr(), 40000)
	for dst, want := range map[string]bool{"10.96.0.1:443": true, "10.50.1.1:80": true, "10.51.0.1:80": false} {
		if _, ok := c.policy.Allow(src, netip.MustParseAddrPort(dst), "tcp"); ok != want {
			t.Errorf("after registering --also-proxy 10.50.0.0/16 --allow-api-server: %s allowed %v, want %v", dst, ok, want)
		}
	}
	req = regReq(t, c, alice, priv) // the next `up` of this key, without the flags
	if _, err := c.Register(alice, req); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{"10.96.0.1:443", "10.50.1.1:80"} {
		if _, ok := c.policy.Allow(src, netip.MustParseAddrPort(dst), "tcp"); ok {
			t.Errorf("after registering without the flags: %s still allowed", dst)
		}
	}
	other := newKey(t)
	bad := regReq(t, c, alice, other)
	bad.AlsoProxy = []string{"not-a-cidr"}
	if _, err := c.Register(alice, bad); err == nil {
		t.Errorf("register with also_proxy %q: admitted, want refused", bad.AlsoProxy[0])
	}
	if _, ok := fp.peers[other.PublicKey()]; ok {
		t.Errorf("a refused registration added its peer")
	}
}
