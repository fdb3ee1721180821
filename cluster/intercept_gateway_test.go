package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestGatewayPatcher: the gateway patches with its own Deployment's image
// and pull policy and its relay Service's address (no workstation chooses
// them), records the workstation's grace and key, restores, and refuses
// workloads outside its namespace.
func TestGatewayPatcher(t *testing.T) {
	cs := interceptWorld(t)
	ctx := context.Background()
	if _, err := cs.AppsV1().Deployments(testNS).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: GatewayName, Namespace: testNS},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: GatewayContainer, Image: "registry.example/bridgetun-agent:v9", ImagePullPolicy: corev1.PullAlways},
		}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := &GatewayPatcher{Client: cs, Namespace: testNS}
	if _, err := p.Patch(ctx, apiTarget(), time.Minute, "key-a"); err == nil || !strings.Contains(err.Error(), "relay service") {
		t.Fatalf("patch without a relay Service: got %v, want an error naming it", err)
	}
	if _, err := cs.CoreV1().Services(testNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: RelayName, Namespace: testNS}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.7.7"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tgt, err := p.Resolve(ctx, testNS, "api", "http")
	if err != nil {
		t.Fatal(err)
	}
	changed, err := p.Patch(ctx, tgt, 90*time.Second, "key-a")
	if err != nil || !changed {
		t.Fatalf("patch: got %v, %v; want changed", changed, err)
	}
	d := getDeployment(t, cs, "api")
	var sidecar *corev1.Container
	for i, c := range d.Spec.Template.Spec.Containers {
		if c.Name == SidecarContainerName {
			sidecar = &d.Spec.Template.Spec.Containers[i]
		}
	}
	if sidecar == nil || sidecar.Image != "registry.example/bridgetun-agent:v9" || sidecar.ImagePullPolicy != corev1.PullAlways ||
		!strings.Contains(strings.Join(sidecar.Args, " "), "10.96.7.7:8083") {
		t.Fatalf("sidecar: got %+v, want the gateway's image, pull policy and relay 10.96.7.7:8083", sidecar)
	}
	if d.Annotations[AnnotationGrace] != "1m30s" || d.Annotations[AnnotationPatchedBy] != "key-a" {
		t.Errorf("annotations: got %v, want grace 1m30s and patched-by key-a", d.Annotations)
	}
	if again, err := p.Patch(ctx, tgt, 90*time.Second, "key-b"); err != nil || again {
		t.Errorf("second patch: got %v, %v; want unchanged", again, err)
	}
	if restored, err := p.Restore(ctx, tgt.Ref()); err != nil || !restored {
		t.Errorf("restore: got %v, %v; want restored", restored, err)
	}
	if _, err := p.Resolve(ctx, "other", "api", "http"); err == nil || !strings.Contains(err.Error(), "only in its namespace") {
		t.Errorf("resolve in another namespace: got %v, want a refusal", err)
	}
	other := tgt
	other.Namespace = "other"
	if _, err := p.Patch(ctx, other, time.Minute, "key-a"); err == nil {
		t.Error("patch in another namespace: want a refusal")
	}
	if _, err := p.Restore(ctx, other.Ref()); err == nil {
		t.Error("restore in another namespace: want a refusal")
	}
}
