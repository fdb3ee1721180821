package cluster

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

// TestPodBacksService: only a live pod with the token's UID and
// ServiceAccount, running the sidecar, and selected by the Service counts.
func TestPodBacksService(t *testing.T) {
	pod := func(name, uid, sa string, labels map[string]string, sidecar bool) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, UID: types.UID("uid-" + uid), Labels: labels},
			Spec:       corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app"}}},
		}
		if sidecar {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: SidecarContainerName})
		}
		return p
	}
	svc := func(name string, sel map[string]string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name}, Spec: corev1.ServiceSpec{Selector: sel}}
	}
	objs := []runtime.Object{
		pod("web-1", "1", "", map[string]string{"app": "web"}, true),
		pod("web-plain", "2", "", map[string]string{"app": "web"}, false),
		pod("billing-1", "3", "billing", map[string]string{"app": "billing"}, true),
		svc("web", map[string]string{"app": "web"}),
		svc("billing", map[string]string{"app": "billing"}),
		svc("external", nil),
	}
	client := fake.NewSimpleClientset(objs...)
	for _, tc := range []struct {
		name, pod, uid, sa, svc string
		want                    bool
	}{
		{"its own Service", "web-1", "uid-1", "default", "web", true},
		{"another Service", "web-1", "uid-1", "default", "billing", false},
		{"a pod replaced under the same name", "web-1", "uid-old", "default", "web", false},
		{"another ServiceAccount", "web-1", "uid-1", "billing", "web", false},
		{"a pod without the sidecar", "web-plain", "uid-2", "default", "web", false},
		{"a named ServiceAccount", "billing-1", "uid-3", "billing", "billing", true},
		{"a Service without a selector", "web-1", "uid-1", "default", "external", false},
		{"no such Service", "web-1", "uid-1", "default", "nope", false},
		{"no such pod", "web-9", "uid-9", "default", "web", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodBacksService(t.Context(), client, "shop", tc.pod, tc.uid, tc.sa, tc.svc)
			if err != nil || got != tc.want {
				t.Errorf("PodBacksService(%s, %s) = %v, %v; want %v", tc.pod, tc.svc, got, err, tc.want)
			}
		})
	}
}
