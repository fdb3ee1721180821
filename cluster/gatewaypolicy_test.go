package cluster

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestGatewayPolicyArgs: the Deployment passes the policy as flags and
// the node's IP through the downward API.
func TestGatewayPolicyArgs(t *testing.T) {
	spec := testSpec
	spec.Policy = GatewayPolicy{
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:96::/108")},
		APIServer:    []netip.AddrPort{netip.MustParseAddrPort("172.18.0.2:6443")},
	}
	var dep *appsv1.Deployment
	for _, o := range GatewayObjects(spec) {
		if d, ok := o.(*appsv1.Deployment); ok {
			dep = d
		}
	}
	c := dep.Spec.Template.Spec.Containers[0]
	want := []string{"--pod-cidr", "10.244.0.0/16", "--service-cidr", "10.96.0.0/12", "--service-cidr", "fd00:96::/108", "--api-server", "172.18.0.2:6443"}
	if got := c.Args[len(c.Args)-len(want):]; !slices.Equal(got, want) {
		t.Errorf("args %q: want them to end with %q", c.Args, want)
	}
	i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "HOST_IP" })
	if i < 0 || c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.FieldRef == nil || c.Env[i].ValueFrom.FieldRef.FieldPath != "status.hostIP" {
		t.Errorf("env %v: want HOST_IP from status.hostIP", c.Env)
	}
	spec.Policy = GatewayPolicy{}
	for _, o := range GatewayObjects(spec) {
		if d, ok := o.(*appsv1.Deployment); ok && slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--pod-cidr") {
			t.Errorf("zero policy: args %q name a pod CIDR", d.Spec.Template.Spec.Containers[0].Args)
		}
	}
}

// TestDiscoverGatewayPolicy: the CIDRs as DiscoverNetworks finds them and
// the kubernetes Service's endpoints.
func TestDiscoverGatewayPolicy(t *testing.T) {
	port := int32(6443)
	client := fake.NewClientset(
		&networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.96.0.0/16"}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.0.0/24"}},
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "kubernetes", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.88.0.1"}}, {Addresses: []string{"10.88.0.2"}}},
			Ports:       []discoveryv1.EndpointPort{{Port: &port}},
		},
	)
	got, err := DiscoverGatewayPolicy(t.Context(), client, "bt", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := GatewayPolicy{
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
		APIServer:    []netip.AddrPort{netip.MustParseAddrPort("10.88.0.1:6443"), netip.MustParseAddrPort("10.88.0.2:6443")},
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("policy (-want +got):\n%s", diff)
	}
}
