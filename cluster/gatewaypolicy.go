package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// GatewayPolicy is what the gateway's destination policy needs to know
// of the cluster, passed to it as arguments at every install and upgrade
// (so an upgrade refreshes it). Zero: the gateway dials nothing of the
// cluster for workstations, only their --also-proxy ranges and its DNS.
type GatewayPolicy struct {
	PodCIDRs     []netip.Prefix
	ServiceCIDRs []netip.Prefix
	// APIServer are the API server's own endpoints (the kubernetes
	// Service's EndpointSlices); the gateway adds the Service address itself.
	APIServer []netip.AddrPort
}

// args renders p as the gateway's flags.
func (p GatewayPolicy) args() []string {
	var out []string
	for _, c := range p.PodCIDRs {
		out = append(out, "--pod-cidr", c.String())
	}
	for _, c := range p.ServiceCIDRs {
		out = append(out, "--service-cidr", c.String())
	}
	for _, a := range p.APIServer {
		out = append(out, "--api-server", a.String())
	}
	return out
}

// DiscoverGatewayPolicy finds what GatewayPolicy holds with the
// installer's rights: the pod and service CIDRs as DiscoverNetworksWith
// finds them (an unknown service CIDR is an error: a gateway that knows
// no CIDR dials nothing of the cluster), and the API server's endpoints
// (best effort: without them the gateway still refuses the kubernetes
// Service address).
func DiscoverGatewayPolicy(ctx context.Context, client kubernetes.Interface, ns string, log *slog.Logger) (GatewayPolicy, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nets, err := DiscoverNetworksWith(ctx, client, NetworkOptions{Namespace: ns, Log: log})
	if err != nil {
		return GatewayPolicy{}, fmt.Errorf("find the cluster's CIDRs for the gateway's destination policy: %w", err)
	}
	p := GatewayPolicy{PodCIDRs: nets.PodCIDRs, ServiceCIDRs: nets.ServiceCIDRs}
	list, err := client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kubernetes"})
	if err != nil {
		log.Debug("API server endpoints not readable; the gateway refuses only the kubernetes Service address", "err", err)
		return p, nil
	}
	for _, s := range list.Items {
		p.APIServer = appendEndpoints(p.APIServer, s)
	}
	return p, nil
}

// appendEndpoints adds the addresses and ports of one EndpointSlice.
func appendEndpoints(out []netip.AddrPort, s discoveryv1.EndpointSlice) []netip.AddrPort {
	for _, port := range s.Ports {
		if port.Port == nil {
			continue
		}
		for _, ep := range s.Endpoints {
			for _, a := range ep.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				ap := netip.AddrPortFrom(ip, uint16(*port.Port))
				if !slices.Contains(out, ap) {
					out = append(out, ap)
				}
			}
		}
	}
	return out
}
