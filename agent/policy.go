package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/bridgetun/bridgetun/agent/api"
)

// Refusal reasons of the destination policy: the reason label of
// bridgetun_gateway_refused_total.
const (
	ReasonMetadata  = "metadata"        // a cloud instance-metadata address
	ReasonKubelet   = "kubelet"         // the kubelet's port on a node
	ReasonAPIServer = "api-server"      // the API server, without --allow-api-server
	ReasonPeer      = "peer"            // another workstation's tunnel address
	ReasonOutside   = "outside-cluster" // not the cluster's pod or service CIDRs, nor the peer's --also-proxy
)

// Policy is the gateway's destination policy: what it dials for a peer.
//
// Always refused, whatever a peer registered: cloud metadata addresses
// (metadataAddrs), the kubelet's ports (10250, 10255) on the gateway's
// node and on any address outside the pod and service CIDRs (a node IP
// reached through --also-proxy), and every workstation's tunnel address
// (api.TunnelNetwork: a peer never reaches another peer through the
// gateway; the relay's own dials into workstations are not peer flows).
// Refused unless the peer registered with AllowAPIServer: the API server's
// addresses (the kubernetes Service and its endpoints). Admitted: the
// cluster's pod and service CIDRs, and the --also-proxy ranges that peer
// registered (only for that peer). Everything else is refused as outside
// the cluster. With no CIDRs configured nothing of the cluster is admitted:
// a missing value closes, never opens. The gateway's DNS on its tunnel
// address is redirected before the policy is asked.
//
// Safe for concurrent use: Allow runs once per new flow on gVisor's
// goroutines while the control API records registrations.
type Policy struct {
	cfg PolicyConfig

	mu    sync.RWMutex
	peers map[netip.Addr]PeerGrant // by the peer's tunnel address
}

// PolicyConfig is what the gateway knows about its cluster.
type PolicyConfig struct {
	PodCIDRs     []netip.Prefix // none = no pod address is admitted
	ServiceCIDRs []netip.Prefix // none = no service address is admitted
	// NodeIP is the gateway's node (the pod's status.hostIP), whose
	// kubelet ports are refused; invalid = unknown (the kubelet ports are
	// then refused only outside the pod and service CIDRs).
	NodeIP netip.Addr
	// APIServer are the API server's addresses: the kubernetes Service
	// (KUBERNETES_SERVICE_HOST:PORT) and its endpoints. Refused (TCP and
	// UDP to that address and port) unless the peer allowed them.
	APIServer []netip.AddrPort
}

// PeerGrant is what one peer asked of the policy when it registered.
type PeerGrant struct {
	AlsoProxy      []netip.Prefix // extra ranges admitted for this peer
	AllowAPIServer bool           // the API server is admitted for this peer
}

// kubeletPorts are the kubelet's API port and its read-only port.
var kubeletPorts = []uint16{10250, 10255}

// metadataAddrs are the cloud instance-metadata and platform addresses,
// refused for every peer (each holds the node's or the pod's cloud
// credentials or vouches for them):
//   - AWS: IMDS 169.254.169.254 and fd00:ec2::254
//     (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html),
//     ECS task metadata and credentials 169.254.170.2, EKS Pod Identity
//     agent 169.254.170.23 and fd00:ec2::23.
//   - GCP: 169.254.169.254 (metadata.google.internal) and, on IPv6-only
//     VMs, fd20:ce::254 (https://cloud.google.com/compute/docs/metadata/querying-metadata).
//   - Azure: IMDS 169.254.169.254 and the WireServer 168.63.129.16
//     (https://learn.microsoft.com/azure/virtual-network/what-is-ip-address-168-63-129-16).
//   - Alibaba Cloud: 100.100.100.200
//     (https://www.alibabacloud.com/help/en/ecs/user-guide/view-instance-metadata).
//   - OCI: 169.254.169.254 (https://docs.oracle.com/iaas/Content/Compute/Tasks/gettingmetadata.htm)
//     and fd00:c1::a9fe:a9fe, the IPv6 endpoint Oracle's own SDKs and OKE
//     node scripts try (oci-python-sdk instance principals signer).
//
// The link-local ones are refused by the gateway's stack as well; naming
// them here makes the refusal count as metadata, not local.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"),
	netip.MustParseAddr("169.254.170.2"),
	netip.MustParseAddr("169.254.170.23"),
	netip.MustParseAddr("168.63.129.16"),
	netip.MustParseAddr("100.100.100.200"),
	netip.MustParseAddr("fd00:ec2::254"),
	netip.MustParseAddr("fd00:ec2::23"),
	netip.MustParseAddr("fd20:ce::254"),
	netip.MustParseAddr("fd00:c1::a9fe:a9fe"),
}

// NewPolicy returns the policy for cfg, with no peer grants yet.
func NewPolicy(cfg PolicyConfig) *Policy {
	unmapPrefixes := func(ps []netip.Prefix) []netip.Prefix {
		out := make([]netip.Prefix, 0, len(ps))
		for _, p := range ps {
			out = append(out, netip.PrefixFrom(p.Addr().Unmap(), min(p.Bits(), p.Addr().Unmap().BitLen())).Masked())
		}
		return out
	}
	cfg.PodCIDRs, cfg.ServiceCIDRs = unmapPrefixes(cfg.PodCIDRs), unmapPrefixes(cfg.ServiceCIDRs)
	cfg.NodeIP = cfg.NodeIP.Unmap()
	apiAddrs := make([]netip.AddrPort, 0, len(cfg.APIServer))
	for _, a := range cfg.APIServer {
		apiAddrs = append(apiAddrs, netip.AddrPortFrom(a.Addr().Unmap(), a.Port()))
	}
	cfg.APIServer = apiAddrs
	return &Policy{cfg: cfg, peers: map[netip.Addr]PeerGrant{}}
}

// ParseGrant checks what a registration asks of the policy: each
// AlsoProxy entry must be a CIDR.
func ParseGrant(req api.RegisterRequest) (PeerGrant, error) {
	g := PeerGrant{AllowAPIServer: req.AllowAPIServer}
	for _, s := range req.AlsoProxy {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return PeerGrant{}, fmt.Errorf("also_proxy %q: want a CIDR such as 10.20.0.0/16", s)
		}
		g.AlsoProxy = append(g.AlsoProxy, netip.PrefixFrom(p.Addr().Unmap(), min(p.Bits(), p.Addr().Unmap().BitLen())).Masked())
	}
	return g, nil
}

// SetPeer records the grant of the peer at tunnel address addr, replacing
// what it (or an earlier peer at that address) registered before. Every
// registration calls it, so an address handed to a new key never keeps
// the old key's grant.
func (p *Policy) SetPeer(addr netip.Addr, g PeerGrant) {
	g.AlsoProxy = slices.Clone(g.AlsoProxy)
	p.mu.Lock()
	p.peers[addr.Unmap()] = g
	p.mu.Unlock()
}

// RemovePeer forgets the grant of the peer at addr.
func (p *Policy) RemovePeer(addr netip.Addr) {
	p.mu.Lock()
	delete(p.peers, addr.Unmap())
	p.mu.Unlock()
}

// Allow decides one new flow from the peer at src to dst (proto "tcp",
// "udp" or "icmp"): ok, or the reason it is refused. It is
// netstack.GatewayConfig.Allow.
func (p *Policy) Allow(src, dst netip.AddrPort, proto string) (reason string, ok bool) {
	a := dst.Addr().Unmap()
	ported := proto != "icmp" // kubelet and API server are ports, not hosts
	p.mu.RLock()
	g := p.peers[src.Addr().Unmap()]
	p.mu.RUnlock()
	inCluster := contains(p.cfg.PodCIDRs, a) || contains(p.cfg.ServiceCIDRs, a)
	switch {
	case a == api.GatewayTunnelAddr:
		return "", true // the gateway's own address: its stack answers (DNS) or refuses it
	case slices.Contains(metadataAddrs, a):
		return ReasonMetadata, false
	case api.TunnelNetwork.Contains(a):
		return ReasonPeer, false
	case ported && slices.Contains(kubeletPorts, dst.Port()) && (a == p.cfg.NodeIP || !inCluster):
		return ReasonKubelet, false
	case ported && !g.AllowAPIServer && slices.Contains(p.cfg.APIServer, netip.AddrPortFrom(a, dst.Port())):
		return ReasonAPIServer, false
	case inCluster || contains(g.AlsoProxy, a):
		return "", true
	}
	return ReasonOutside, false
}

func contains(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
