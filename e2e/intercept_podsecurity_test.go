package e2e

// An intercept in a namespace whose Pod Security level refuses the init
// step (root + NET_ADMIN) is refused before anything is patched: the
// patched pod goes to the real API server as a server-side dry run first.
//
//	bt-ws: bridgetun up -n bt-psa ──► gateway in bt-psa (non-root: baseline admits it)
//	       bridgetun intercept web ──► dry-run Pod ──► PodSecurity "baseline" says no
//	                                                  ⇒ one line, Deployment web untouched

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const psaNamespace = "bt-psa"

func TestInterceptPodSecurity(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	c.DumpOnFailure(t, psaNamespace)
	deployPSASample(t, ctx, c)

	ws := newWorkstation(t, c, "psa", false)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = ws.run(ctx, "down")
		if out, err := ws.run(ctx, "uninstall", "--all", "-n", psaNamespace); err != nil {
			t.Logf("uninstall: %v\n%s", err, out)
		}
		_ = c.Client.CoreV1().Namespaces().Delete(ctx, psaNamespace, metav1.DeleteOptions{})
	})
	if out, err := ws.run(ctx, "up", "--background", "--netstack", "-n", psaNamespace, "--gateway-image", gatewayImage,
		"--transport", "stream", "--socks=", "--http-proxy="); err != nil {
		t.Fatalf("up in a baseline namespace (the gateway runs as non-root): %v\n%s", err, out)
	}
	localServer(t, ctx, c, false, "127.0.0.1:18095", "web-local", "")
	before := webDeployment(t, ctx, c)

	out, err := ws.run(ctx, "intercept", "web", "--port", "18095", "--detach", "--no-mount")
	if err == nil {
		t.Fatalf("intercept in a baseline namespace succeeded, want it refused:\n%s", out)
	}
	var errLines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(l, "bridgetun:") {
			errLines = append(errLines, l)
		}
	}
	if len(errLines) != 1 {
		t.Fatalf("intercept: got %d error lines, want the reason in one:\n%s", len(errLines), out)
	}
	t.Logf("refused: %s", errLines[0])
	for _, want := range []string{`namespace "` + psaNamespace + `"`, `Pod Security "baseline`, "NET_ADMIN", "nothing was patched",
		"pod-security.kubernetes.io/enforce=privileged"} {
		if !strings.Contains(errLines[0], want) {
			t.Errorf("intercept refusal %q: want it to contain %q", errLines[0], want)
		}
	}
	after := webDeployment(t, ctx, c)
	if before.Generation != after.Generation || templateJSON(before) != templateJSON(after) ||
		after.Annotations["bridgetun.io/original-template"] != "" || after.Labels["bridgetun.io/patched"] != "" {
		t.Errorf("Deployment web changed by the refused intercept: generation %d → %d, annotations %v, labels %v",
			before.Generation, after.Generation, after.Annotations, after.Labels)
	}
	st, err := ws.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Intercepts) != 0 {
		t.Errorf("status after the refused intercept: %+v, want no intercept", st.Intercepts)
	}
}

// deployPSASample creates namespace bt-psa enforcing Pod Security
// "baseline", with Deployment and Service web (testapp), and waits for it.
func deployPSASample(t *testing.T, ctx context.Context, c *Cluster) {
	t.Helper()
	nss := c.Client.CoreV1().Namespaces()
	// A leftover of an interrupted run goes first.
	if err := nss.Delete(ctx, psaNamespace, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if err := Eventually(ctx, 2*time.Minute, func(ctx context.Context) error {
		if _, err := nss.Get(ctx, psaNamespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("namespace %s still there (%v)", psaNamespace, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err := nss.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: psaNamespace, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "baseline", "bridgetun.io/e2e": "pod-security",
	}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "web"}
	grace := int64(2)
	_, err = c.Client.AppsV1().Deployments(psaNamespace).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: psaNamespace, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: new(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{
						Name: "web", Image: "bridgetun.local/testapp:dev", ImagePullPolicy: corev1.PullNever,
						Command: []string{"/testapp", "http"},
						Ports:   []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
						Env:     []corev1.EnvVar{{Name: "SERVICE_NAME", Value: "web"}},
					}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Client.CoreV1().Services(psaNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: psaNamespace, Labels: labels},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{
			Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP,
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitRollout(ctx, psaNamespace, "web"); err != nil {
		t.Fatal(err)
	}
}

func webDeployment(t *testing.T, ctx context.Context, c *Cluster) *appsv1.Deployment {
	t.Helper()
	d, err := c.Client.AppsV1().Deployments(psaNamespace).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func templateJSON(d *appsv1.Deployment) string {
	b, _ := json.Marshal(d.Spec.Template)
	return string(b)
}
