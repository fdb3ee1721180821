package e2e

// The relay's sidecar credential on the real cluster: a pod's projected
// ServiceAccount token for audience bridgetun-relay, verified by the real
// API server (TokenReview) and bound to its pod. With api intercepted,
// tokens minted by TokenRequest for chosen pods are sent from inside the
// frontend pod to the relay Service:
//
//	frontend pod ──/testapp get -H "Authorization: Bearer T"──► bridgetun-relay:8083 ──► gateway
//	  T bound to an api pod (runs the sidecar)       → 200, api's route
//	  T bound to the frontend pod (another Service)  → 403
//	  T of an api pod for another audience           → 401

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridgetun/bridgetun/cluster"
)

func TestRelayCredentials(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	c.DumpOnFailure(t, SampleNamespace)
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	ws := newWorkstation(t, c, "relay", false)
	if out, err := ws.run(ctx, "uninstall", "--all", "-n", SampleNamespace); err != nil { // another run's gateway
		t.Fatalf("uninstall --all: %v\n%s", err, out)
	}
	if out, err := ws.run(ctx, "up", "--background", "--netstack", "-n", SampleNamespace, "--gateway-image", gatewayImage,
		"--transport", "stream", "--socks=", "--http-proxy="); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	localServer(t, ctx, c, false, "127.0.0.1:18096", "api-relay", "")
	if out, err := ws.run(ctx, "intercept", "api", "--port", "18096", "--detach", "--no-mount"); err != nil {
		t.Fatalf("intercept: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := ws.run(ctx, "leave", "api"); err != nil {
			t.Logf("leave: %v\n%s", err, out)
		}
	})

	apiPod := runningPod(t, ctx, c, "app=api", true)
	frontendPod := runningPod(t, ctx, c, "app=frontend", false)
	token := func(p *corev1.Pod, audience string) string {
		t.Helper()
		exp := int64(600)
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		tr, err := c.Client.CoreV1().ServiceAccounts(p.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{audience}, ExpirationSeconds: &exp,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("token for pod %s: %v", p.Name, err)
		}
		return tr.Status.Token
	}
	// routes asks the relay from inside the frontend pod; the answer's
	// body and, on failure, the status (the token redacted).
	routes := func(tok string) (string, error) {
		url := fmt.Sprintf("http://%s.%s:%d/v1/routes?namespace=%s&service=api&after=0", cluster.RelayName, SampleNamespace, cluster.RelayPort, SampleNamespace)
		out, err := c.RunKubectl(ctx, "-n", SampleNamespace, "exec", frontendPod.Name, "-c", "frontend", "--",
			"/testapp", "get", "-timeout", "5s", "-H", "Authorization: Bearer "+tok, url)
		if err != nil {
			return out, errors.New(strings.ReplaceAll(err.Error(), tok, "<token>"))
		}
		return out, nil
	}

	out, err := routes(token(apiPod, "bridgetun-relay"))
	if err != nil || !strings.Contains(out, `"routes":[{`) || !strings.Contains(out, `"target":"`) {
		t.Errorf("routes with an api pod's relay token: %v\n%s\nwant 200 with api's route", err, out)
	}
	out, err = routes(token(frontendPod, "bridgetun-relay"))
	if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(out, "is not an intercepted pod of service api") {
		t.Errorf("routes with the frontend pod's relay token: %v\n%s\nwant 403 (a pod of another Service)", err, out)
	}
	out, err = routes(token(apiPod, "https://example.com/another-audience"))
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("routes with an api pod's token for another audience: %v\n%s\nwant 401", err, out)
	}
}

// runningPod returns a running, not terminating pod of bt-sample matching
// selector; withSidecar: one that runs bridgetun's sidecar.
func runningPod(t *testing.T, ctx context.Context, c *Cluster, selector string, withSidecar bool) *corev1.Pod {
	t.Helper()
	var found *corev1.Pod
	if err := Eventually(ctx, time.Minute, func(ctx context.Context) error {
		pods, err := c.Client.CoreV1().Pods(SampleNamespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return err
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			sidecar := false
			for _, ct := range p.Spec.Containers {
				sidecar = sidecar || ct.Name == cluster.SidecarContainerName
			}
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && sidecar == withSidecar {
				found = p
				return nil
			}
		}
		return fmt.Errorf("no running pod %s (sidecar %v)", selector, withSidecar)
	}); err != nil {
		t.Fatal(err)
	}
	return found
}
