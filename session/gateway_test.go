package session

import (
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/version"
)

// readyGatewayPod is a Running, Ready gateway pod of this version.
func readyGatewayPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "app",
			Labels:      map[string]string{cluster.LabelName: cluster.GatewayName},
			Annotations: map[string]string{cluster.AnnotationVersion: version.Version}},
		Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: cluster.GatewayContainer, Image: "bridgetun-agent:test", ImagePullPolicy: corev1.PullNever}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func setup(cs *fake.Clientset) gatewaySetup {
	allowAccess(cs, nil)
	return gatewaySetup{Client: cs, Namespace: "app", Image: "bridgetun-agent:test", ReadyWithin: 5 * time.Second, Progress: func(string, ...any) {}}
}

// allowAccess answers the SelfSubjectAccessReviews: allowed unless deny
// says no.
func allowAccess(cs *fake.Clientset, deny func(*authorizationv1.ResourceAttributes) bool) {
	cs.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview)
		r.Status.Allowed = deny == nil || !deny(r.Spec.ResourceAttributes)
		return true, r, nil
	})
}

// TestEnsureGatewayNeedsInstallRights: a user who may not install (only
// the developer role) is told so in one line, and nothing is created.
func TestEnsureGatewayNeedsInstallRights(t *testing.T) {
	cs := fake.NewClientset()
	g := setup(cs)
	allowAccess(cs, func(ra *authorizationv1.ResourceAttributes) bool {
		return ra.Verb == "create" && ra.Resource == "serviceaccounts"
	})
	_, err := ensureGateway(t.Context(), g)
	want := `cannot install the gateway in app (there is none): forbidden: you need "create" on "serviceaccounts" in namespace "app"`
	if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v, want one line containing %q", err, want)
	}
	if d, _ := cs.AppsV1().Deployments("app").List(t.Context(), metav1.ListOptions{}); len(d.Items) != 0 {
		t.Errorf("a gateway was created without install rights")
	}
}

// TestEnsureGatewayInstalls: a missing gateway is installed (with no key
// Secret: it makes its key at start), and the ready pod's image is what
// sidecars will run.
func TestEnsureGatewayInstalls(t *testing.T) {
	cs := fake.NewClientset(readyGatewayPod("gw-1"))
	pod, err := ensureGateway(t.Context(), setup(cs))
	if err != nil {
		t.Fatal(err)
	}
	if pod.Name != "gw-1" || pod.Image != "bridgetun-agent:test" || pod.PullPolicy != corev1.PullNever {
		t.Errorf("pod: got %+v", pod)
	}
	if s, err := cs.CoreV1().Secrets("app").List(t.Context(), metav1.ListOptions{}); err != nil || len(s.Items) != 0 {
		t.Errorf("secrets after install: %v, %v; want none", s, err)
	}
}

// TestEnsureGatewayVersionMismatch: an installed gateway of another version
// is not touched; the error says how to upgrade.
func TestEnsureGatewayVersionMismatch(t *testing.T) {
	cs := fake.NewClientset(&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: cluster.GatewayName, Namespace: "app",
		Annotations: map[string]string{cluster.AnnotationVersion: "v0.0.1-old"}}})
	_, err := ensureGateway(t.Context(), setup(cs))
	if err == nil || !strings.Contains(err.Error(), "runs v0.0.1-old") || !strings.Contains(err.Error(), "bridgetun install --upgrade") {
		t.Fatalf("got %v, want the mismatch with the upgrade hint", err)
	}
}

// TestEnsureGatewayRemovesFailedFirstInstall: a gateway installed into a
// namespace that had none and never ready (here: no pod ever appears) is
// removed again, so a failed first up leaves nothing behind; a gateway that
// was there before is left alone.
func TestEnsureGatewayRemovesFailedFirstInstall(t *testing.T) {
	t.Run("first install", func(t *testing.T) {
		cs := fake.NewClientset()
		g := setup(cs)
		g.ReadyWithin = 300 * time.Millisecond
		_, err := ensureGateway(t.Context(), g)
		if err == nil || !strings.Contains(err.Error(), "was removed again") {
			t.Fatalf("got %v, want the readiness error saying the gateway was removed", err)
		}
		if _, err := cluster.GatewayVersion(t.Context(), cs, "app"); !errors.Is(err, cluster.ErrGatewayNotInstalled) {
			t.Errorf("gateway after the failed first up: %v, want it removed", err)
		}
		if _, err := cs.CoreV1().Secrets("app").Get(t.Context(), cluster.GatewayName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("secret after the failed first up: %v, want it removed", err)
		}
	})
	t.Run("installed before", func(t *testing.T) {
		cs := fake.NewClientset(&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: cluster.GatewayName, Namespace: "app",
			Annotations: map[string]string{cluster.AnnotationVersion: version.Version}}})
		g := setup(cs)
		g.ReadyWithin = 300 * time.Millisecond
		if _, err := ensureGateway(t.Context(), g); err == nil || strings.Contains(err.Error(), "removed") {
			t.Fatalf("got %v, want the readiness error and nothing removed", err)
		}
		if v, err := cluster.GatewayVersion(t.Context(), cs, "app"); err != nil || v != version.Version {
			t.Errorf("gateway: %q, %v; want it still installed", v, err)
		}
	})
}
