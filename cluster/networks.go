package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/bridgetun/bridgetun/internal/obs"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Networks is what the workstation routes and resolves through the tunnel.
type Networks struct {
	ServiceCIDRs  []netip.Prefix
	PodCIDRs      []netip.Prefix // may be empty when neither nodes nor pods are visible
	ClusterDomain string         // e.g. cluster.local
	DNS           netip.Addr     // kube-dns ClusterIP; invalid when not found
}

// NetworkOptions tunes DiscoverNetworksWith.
type NetworkOptions struct {
	Namespace     string       // the user's namespace: the dry-run Service probe, and where Services and pods are read when cluster-wide lists are forbidden; "" = "default"
	ClusterDomain string       // "" = read it from the CoreDNS Corefile, else "cluster.local"
	Log           *slog.Logger // nil discards
}

// DefaultClusterDomain is Kubernetes' default DNS domain.
const DefaultClusterDomain = "cluster.local"

// DiscoverNetworks is DiscoverNetworksWith with zero options.
func DiscoverNetworks(ctx context.Context, client kubernetes.Interface) (Networks, error) {
	return DiscoverNetworksWith(ctx, client, NetworkOptions{})
}

// DiscoverNetworksWith finds the service and pod CIDRs, the cluster DNS
// address and the cluster domain. Only the service CIDRs are required; the
// rest is best effort and logged.
func DiscoverNetworksWith(ctx context.Context, client kubernetes.Interface, o NetworkOptions) (Networks, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	log = obs.Component(log, "cluster")
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	var n Networks
	var err error
	if n.ServiceCIDRs, err = serviceCIDRs(ctx, client, o.Namespace, log); err != nil {
		return n, err
	}
	if n.PodCIDRs, err = podCIDRs(ctx, client, o.Namespace, log); err != nil {
		return n, err
	}
	if len(n.PodCIDRs) == 0 {
		log.Warn("pod CIDRs unknown: neither nodes nor pods are visible; pod IPs will not be routed")
	}
	n.DNS = dnsAddr(ctx, client, log)
	n.ClusterDomain = o.ClusterDomain
	if n.ClusterDomain == "" {
		n.ClusterDomain = clusterDomain(ctx, client, log)
	}
	return n, nil
}

// serviceCIDRs tries the ServiceCIDR API, then a dry-run Service with an
// out-of-range ClusterIP, then infers from existing Services.
func serviceCIDRs(ctx context.Context, client kubernetes.Interface, ns string, log *slog.Logger) ([]netip.Prefix, error) {
	list, err := client.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{})
	switch {
	case err == nil:
		var out []netip.Prefix
		for _, sc := range list.Items {
			for _, c := range sc.Spec.CIDRs {
				if p, err := netip.ParsePrefix(c); err == nil {
					out = addPrefix(out, p.Masked())
				}
			}
		}
		if len(out) > 0 {
			log.Debug("service CIDRs from the ServiceCIDR API", "cidrs", out)
			return out, nil
		}
	case ctx.Err() != nil:
		return nil, ctx.Err()
	default:
		log.Debug("ServiceCIDR API not usable", "err", err)
	}

	probe := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "bridgetun-cidr-probe-"},
		Spec: corev1.ServiceSpec{
			ClusterIP: "1.1.1.1",
			Ports:     []corev1.ServicePort{{Port: 443, TargetPort: intstr.FromInt32(443)}},
		},
	}
	_, err = client.CoreV1().Services(ns).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		if out := ParseServiceRangeError(err.Error()); len(out) > 0 {
			log.Debug("service CIDRs from a dry-run Service's error", "cidrs", out)
			return out, nil
		}
		log.Debug("dry-run Service probe did not reveal the range", "err", err)
	}

	svcs, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil && !apierrors.IsForbidden(err) {
		return nil, fmt.Errorf("list services to infer the service CIDR: %w", err)
	}
	if err != nil { // cluster-wide list forbidden: the namespace and default
		svcs = &corev1.ServiceList{}
		for _, n := range []string{ns, "default"} {
			l, err := client.CoreV1().Services(n).List(ctx, metav1.ListOptions{})
			if err == nil {
				svcs.Items = append(svcs.Items, l.Items...)
			}
		}
	}
	var ips []netip.Addr
	for _, s := range svcs.Items {
		for _, c := range append([]string{s.Spec.ClusterIP}, s.Spec.ClusterIPs...) {
			if a, err := netip.ParseAddr(c); err == nil {
				ips = append(ips, a)
			}
		}
	}
	out, bits := coverAddrs(ips)
	if len(out) == 0 {
		return nil, errors.New("service CIDR unknown: no ServiceCIDR objects, no range in the dry-run error, no Services with a ClusterIP: check that you can list services")
	}
	log.Debug("service CIDRs inferred from Service ClusterIPs", "cidrs", out, "covering_bits", bits, "services", len(svcs.Items))
	return out, nil
}

var validRangeRE = regexp.MustCompile(`(?i)range of valid IPs is\s+(.*)`)

// ParseServiceRangeError extracts the service CIDRs from the API server's
// error for a ClusterIP outside the range: "... The range of valid IPs is
// 10.96.0.0/12".
func ParseServiceRangeError(msg string) []netip.Prefix {
	m := validRangeRE.FindStringSubmatch(msg)
	if m == nil {
		return nil
	}
	var out []netip.Prefix
	for _, f := range strings.FieldsFunc(m[1], func(r rune) bool {
		return r == ' ' || r == ',' || r == ';' || r == '"' || r == '\'' || r == ']' || r == '[' || r == '\n'
	}) {
		f = strings.TrimRight(f, ".)")
		if p, err := netip.ParsePrefix(f); err == nil {
			out = addPrefix(out, p.Masked())
		}
	}
	return out
}

// podCIDRs unions Node.spec.podCIDRs, else covers running pods' IPs with
// /16s: every namespace's, or ns's when only a namespaced Role allows it.
func podCIDRs(ctx context.Context, client kubernetes.Interface, ns string, log *slog.Logger) ([]netip.Prefix, error) {
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err == nil {
		var out []netip.Prefix
		for _, n := range nodes.Items {
			for _, c := range append([]string{n.Spec.PodCIDR}, n.Spec.PodCIDRs...) {
				if p, err := netip.ParsePrefix(c); err == nil {
					out = addPrefix(out, p.Masked())
				}
			}
		}
		if len(out) > 0 {
			log.Debug("pod CIDRs from Node.spec.podCIDRs", "cidrs", out, "nodes", len(nodes.Items))
			return out, nil
		}
	} else if ctx.Err() != nil {
		return nil, ctx.Err()
	} else {
		log.Debug("cannot list nodes for pod CIDRs", "err", err)
	}

	running := metav1.ListOptions{FieldSelector: "status.phase=Running"}
	pods, err := client.CoreV1().Pods("").List(ctx, running)
	if apierrors.IsForbidden(err) {
		pods, err = client.CoreV1().Pods(ns).List(ctx, running)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Debug("cannot list pods for pod CIDRs", "err", err)
		return nil, nil
	}
	var ips []netip.Addr
	for _, p := range pods.Items {
		if p.Spec.HostNetwork {
			continue // the node's address, not the pod network
		}
		for _, pip := range append([]corev1.PodIP{{IP: p.Status.PodIP}}, p.Status.PodIPs...) {
			if a, err := netip.ParseAddr(pip.IP); err == nil {
				ips = append(ips, a)
			}
		}
	}
	out := coverWith(ips, 16, 64)
	if len(out) > 0 {
		log.Debug("pod CIDRs inferred from pod IPs (covering /16 per IPv4 address)", "cidrs", out, "pods", len(pods.Items))
	}
	return out, nil
}

// coverAddrs covers service IPs with one /16 per family if they all fit,
// else with /12s (IPv6: /108, else /64). It reports which IPv4 size it used.
func coverAddrs(ips []netip.Addr) ([]netip.Prefix, int) {
	var v4, v6 []netip.Addr
	for _, a := range ips {
		if a.Unmap().Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	out4, bits := coverWith(v4, 16, 0), 16
	if len(out4) > 1 {
		out4, bits = coverWith(v4, 12, 0), 12
	}
	out6 := coverWith(v6, 0, 108)
	if len(out6) > 1 {
		out6 = coverWith(v6, 0, 64)
	}
	return append(out4, out6...), bits
}

func coverWith(ips []netip.Addr, bits4, bits6 int) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range ips {
		a = a.Unmap()
		if a.IsUnspecified() || a.IsLoopback() {
			continue
		}
		bits := bits4
		if a.Is6() {
			bits = bits6
		}
		p, _ := a.Prefix(bits)
		out = addPrefix(out, p)
	}
	return out
}

// addPrefix adds p unless it is already covered, dropping prefixes p covers;
// the result stays sorted.
func addPrefix(ps []netip.Prefix, p netip.Prefix) []netip.Prefix {
	for _, q := range ps {
		if q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
			return ps
		}
	}
	ps = slices.DeleteFunc(ps, func(q netip.Prefix) bool { return p.Bits() <= q.Bits() && p.Contains(q.Addr()) })
	ps = append(ps, p)
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return ps
}

// dnsAddr is kube-system/kube-dns's ClusterIP, else any kube-system Service
// labelled k8s-app=kube-dns.
func dnsAddr(ctx context.Context, client kubernetes.Interface, log *slog.Logger) netip.Addr {
	svc, err := client.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
	if err == nil {
		if a, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil {
			return a
		}
	}
	list, err := client.CoreV1().Services("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
	if err == nil {
		for _, s := range list.Items {
			if a, err := netip.ParseAddr(s.Spec.ClusterIP); err == nil {
				return a
			}
		}
	}
	log.Warn("cluster DNS service not found (kube-system/kube-dns or k8s-app=kube-dns)", "err", err)
	return netip.Addr{}
}

var corefileDomainRE = regexp.MustCompile(`(?m)^\s*kubernetes\s+([^\s{]+)`)

// clusterDomain reads the first zone of the CoreDNS Corefile's kubernetes
// plugin, else returns DefaultClusterDomain.
func clusterDomain(ctx context.Context, client kubernetes.Interface, log *slog.Logger) string {
	cm, err := client.CoreV1().ConfigMaps("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		log.Debug("CoreDNS ConfigMap not readable; assuming the default cluster domain", "domain", DefaultClusterDomain, "err", err)
		return DefaultClusterDomain
	}
	if d := ParseCorefileDomain(cm.Data["Corefile"]); d != "" {
		log.Debug("cluster domain from the CoreDNS Corefile", "domain", d)
		return d
	}
	return DefaultClusterDomain
}

// ParseCorefileDomain returns the first zone of the Corefile's kubernetes
// plugin ("kubernetes cluster.local in-addr.arpa ip6.arpa {"), or "".
func ParseCorefileDomain(corefile string) string {
	m := corefileDomainRE.FindStringSubmatch(corefile)
	if m == nil {
		return ""
	}
	return strings.TrimSuffix(m[1], ".")
}
