package cluster

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/google/go-cmp/cmp"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestParseServiceRangeError(t *testing.T) {
	tests := []struct {
		msg  string
		want []netip.Prefix
	}{
		{`Service "bridgetun-cidr-probe-x" is invalid: spec.clusterIPs: Invalid value: []string{"1.1.1.1"}: failed to allocate IP 1.1.1.1: the provided IP (1.1.1.1) is not in the valid range. The range of valid IPs is 10.96.0.0/16`,
			prefixes("10.96.0.0/16")},
		{`... The range of valid IPs is 10.43.0.0/12`, prefixes("10.32.0.0/12")}, // masked
		{`... The range of valid IPs is fd00:10:96::/108.`, prefixes("fd00:10:96::/108")},
		{`... the range of valid IPs is 10.96.0.0/16, fd00::/108`, prefixes("10.96.0.0/16", "fd00::/108")},
		{`Service "x" is invalid: spec.clusterIPs: Invalid value: []string{"1.1.1.1"}: failed to allocate IP 1.1.1.1: the provided network does not match the current range`, nil},
		{`services is forbidden: User "u" cannot create resource "services"`, nil},
		{``, nil},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, ParseServiceRangeError(tt.msg), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
			t.Errorf("ParseServiceRangeError(%q) (-want +got):\n%s", tt.msg, diff)
		}
	}
}

func TestParseCorefileDomain(t *testing.T) {
	tests := []struct{ corefile, want string }{
		{".:53 {\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n       pods insecure\n    }\n}", "cluster.local"},
		{".:53 {\n  kubernetes corp.example. {\n  }\n}", "corp.example"},
		{".:53 {\n  kubernetes{\n  }\n}", ""},
		{".:53 {\n  forward . /etc/resolv.conf\n}", ""},
	}
	for _, tt := range tests {
		if got := ParseCorefileDomain(tt.corefile); got != tt.want {
			t.Errorf("ParseCorefileDomain(%q) = %q, want %q", tt.corefile, got, tt.want)
		}
	}
}

func svc(ns, name, ip string, labels map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}},
	}
}

func node(name string, cidrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	return n
}

func pod(ns, name, ip string, hostNet bool) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{HostNetwork: hostNet},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

// rejectProbe makes the dry-run Service create fail like an API server
// whose error reveals rangeMsg (or is forbidden, when rangeMsg is "").
// The fake would otherwise really create it.
func rejectProbe(client *fake.Clientset, rangeMsg string) {
	client.PrependReactor("create", "services", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if rangeMsg == "" {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "", fmt.Errorf("no"))
		}
		return true, nil, apierrors.NewBadRequest(`Service "p" is invalid: spec.clusterIPs: Invalid value: []string{"1.1.1.1"}: failed to allocate IP 1.1.1.1: the provided IP (1.1.1.1) is not in the valid range. ` + rangeMsg)
	})
}

func TestDiscoverNetworks(t *testing.T) {
	coredns := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "coredns"},
		Data:       map[string]string{"Corefile": ".:53 {\n    kubernetes k8s.test in-addr.arpa ip6.arpa {\n    }\n}\n"},
	}
	tests := []struct {
		name     string
		objects  []runtime.Object
		probeMsg string // dry-run Service error; "" = forbidden
		want     Networks
	}{
		{
			name: "ServiceCIDR API and node podCIDRs",
			objects: []runtime.Object{
				&networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.96.0.0/16", "fd00:10:96::/108"}}},
				&networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "extra"}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.97.0.0/24"}}},
				node("n1", "10.244.0.0/24", "fd00:10:244::/64"), node("n2", "10.244.1.0/24"), node("n3"),
				svc("kube-system", "kube-dns", "10.96.0.10", nil), coredns,
			},
			want: Networks{
				ServiceCIDRs: prefixes("10.96.0.0/16", "10.97.0.0/24", "fd00:10:96::/108"),
				PodCIDRs:     prefixes("10.244.0.0/24", "10.244.1.0/24", "fd00:10:244::/64"),
				DNS:          netip.MustParseAddr("10.96.0.10"), ClusterDomain: "k8s.test",
			},
		},
		{
			name:     "dry-run error and pod IPs",
			probeMsg: "The range of valid IPs is 10.43.0.0/16",
			objects: []runtime.Object{
				node("n1"),
				pod("a", "p1", "10.42.0.5", false), pod("b", "p2", "10.42.3.9", false), pod("kube-system", "kp", "192.168.1.10", true),
				svc("kube-system", "coredns", "10.43.0.10", map[string]string{"k8s-app": "kube-dns"}),
			},
			want: Networks{
				ServiceCIDRs: prefixes("10.43.0.0/16"), PodCIDRs: prefixes("10.42.0.0/16"),
				DNS: netip.MustParseAddr("10.43.0.10"), ClusterDomain: "cluster.local",
			},
		},
		{
			name: "inferred from services within one /16",
			objects: []runtime.Object{
				svc("default", "kubernetes", "10.96.0.1", nil), svc("a", "x", "10.96.200.7", nil), svc("a", "headless", "None", nil),
				svc("kube-system", "kube-dns", "10.96.0.10", nil),
			},
			want: Networks{ServiceCIDRs: prefixes("10.96.0.0/16"), DNS: netip.MustParseAddr("10.96.0.10"), ClusterDomain: "cluster.local"},
		},
		{
			name:    "inferred from services across /16s",
			objects: []runtime.Object{svc("default", "kubernetes", "10.96.0.1", nil), svc("a", "x", "10.100.0.7", nil)},
			want:    Networks{ServiceCIDRs: prefixes("10.96.0.0/12"), ClusterDomain: "cluster.local"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset(tt.objects...)
			rejectProbe(client, tt.probeMsg)
			log := testkit.Logger(t)
			got, err := DiscoverNetworksWith(t.Context(), client, NetworkOptions{Log: log})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestDiscoverNetworksNoServices(t *testing.T) {
	client := fake.NewClientset()
	rejectProbe(client, "")
	if _, err := DiscoverNetworks(t.Context(), client); err == nil {
		t.Error("got no error with no way to find the service CIDR")
	}
}

func TestDiscoverNetworksOverride(t *testing.T) {
	client := fake.NewClientset(svc("default", "kubernetes", "10.96.0.1", nil))
	rejectProbe(client, "")
	got, err := DiscoverNetworksWith(t.Context(), client, NetworkOptions{ClusterDomain: "corp.example"})
	if err != nil || got.ClusterDomain != "corp.example" {
		t.Errorf("got %+v, %v; want cluster domain corp.example", got, err)
	}
}

func TestCheckAccess(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview)
		ra := r.Spec.ResourceAttributes
		if ra.Namespace != "bt" {
			return true, nil, fmt.Errorf("namespace %q", ra.Namespace)
		}
		r.Status.Allowed = !(ra.Resource == "pods" && ra.Subresource == "portforward") && !(ra.Resource == "deployments" && ra.Verb == "update")
		return true, r, nil
	})
	err := CheckAccess(t.Context(), client, "bt", UpAccessChecks("bt"))
	if want := `forbidden: you need "create" on "pods/portforward" in namespace "bt" (ask your cluster admin for the bridgetun role)`; err == nil || err.Error() != want {
		t.Fatalf("up on an installed gateway: got %v, want %q (up does not update deployments)", err, want)
	}
	err = CheckAccess(t.Context(), client, "bt", InstallAccessChecks("bt"))
	want := `forbidden: you need "create" on "pods/portforward", "update" on "deployments.apps" in namespace "bt" (ask your cluster admin for the bridgetun role)`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	c := &Conn{Client: client, Context: "kind-dev"}
	if err := c.CheckAccess(t.Context(), "bt", []AccessCheck{{Verb: "get", Resource: "pods"}}); err != nil {
		t.Errorf("allowed check: %v", err)
	}
	err = c.CheckAccess(t.Context(), "bt", []AccessCheck{{Verb: "create", Resource: "pods", Subresource: "portforward"}})
	want = `context "kind-dev": forbidden: you need "create" on "pods/portforward" in namespace "bt" (ask your cluster admin for the bridgetun role)`
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
}

// TestDiscoverNetworksNamespacedRole: a developer whose Role covers one
// namespace (nothing cluster-wide, no kube-system) still gets routes: the
// dry-run probe in that namespace gives the service range, its pods the
// pod range.
func TestDiscoverNetworksNamespacedRole(t *testing.T) {
	client := fake.NewClientset(node("n1", "10.244.0.0/24"), pod("dev", "api", "10.42.7.3", false), pod("other", "x", "10.50.0.9", false),
		svc("kube-system", "kube-dns", "10.43.0.10", nil))
	var probedIn []string
	client.PrependReactor("*", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetNamespace() == "dev" {
			if a.GetVerb() == "create" && a.GetResource().Resource == "services" {
				probedIn = append(probedIn, a.GetNamespace())
				return true, nil, apierrors.NewBadRequest(`Service "p" is invalid: spec.clusterIPs: Invalid value: []string{"1.1.1.1"}: failed to allocate IP 1.1.1.1: the provided IP (1.1.1.1) is not in the valid range. The range of valid IPs is 10.43.0.0/16`)
			}
			return false, nil, nil // the Role allows reads here
		}
		return true, nil, apierrors.NewForbidden(a.GetResource().GroupResource(), "", fmt.Errorf("namespaced Role only"))
	})
	got, err := DiscoverNetworksWith(t.Context(), client, NetworkOptions{Namespace: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	if want := prefixes("10.43.0.0/16"); !slices.Equal(got.ServiceCIDRs, want) || !slices.Equal(probedIn, []string{"dev"}) {
		t.Errorf("service CIDRs %v (probed in %v), want %v from the probe in dev", got.ServiceCIDRs, probedIn, want)
	}
	if want := prefixes("10.42.0.0/16"); !slices.Equal(got.PodCIDRs, want) {
		t.Errorf("pod CIDRs %v, want %v from dev's pods only", got.PodCIDRs, want)
	}
	if got.DNS.IsValid() || got.ClusterDomain != DefaultClusterDomain {
		t.Errorf("DNS %v, domain %q: want none (kube-system unreadable) and %s", got.DNS, got.ClusterDomain, DefaultClusterDomain)
	}
}
