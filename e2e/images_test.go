package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestAgentImageRuns: the imported agent image starts in the cluster as its non-root user, and its iptables
// runtime (binaries, libraries, extensions) works: iptables-restore --version and iptables -V.
func TestAgentImageRuns(t *testing.T) {
	c := Start(t)
	ns := "bt-e2e-images"
	c.DumpOnFailure(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	img := "bridgetun.local/bridgetun-agent:dev"
	ctr := func(name string, cmd ...string) corev1.Container {
		return corev1.Container{Name: name, Image: img, ImagePullPolicy: corev1.PullNever, Command: cmd}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "agent-image"},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: new(int64),
			InitContainers: []corev1.Container{
				ctr("iptables", "/usr/sbin/iptables", "-V"),
				ctr("iptables-restore", "/usr/sbin/iptables-restore", "--version"),
			},
			Containers: []corev1.Container{ctr("agent", "/usr/local/bin/bridgetun-agent", "version")},
		},
	}
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := Eventually(ctx, 90*time.Second, func(ctx context.Context) error {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		switch p.Status.Phase {
		case corev1.PodSucceeded:
			return nil
		case corev1.PodFailed:
			return fmt.Errorf("pod failed: %+v", p.Status.ContainerStatuses)
		}
		return fmt.Errorf("pod phase %s", p.Status.Phase)
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"iptables": "iptables v1.8", "iptables-restore": "iptables-restore v1.8", "agent": "bridgetun-agent"} {
		b, err := c.Client.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{Container: name}).DoRaw(ctx)
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("container %s: got %q (%v), want %q", name, b, err, want)
		}
	}
	// the image's user is the non-root 65532 (no securityContext above)
	out, err := c.RunKubectl(ctx, "-n", ns, "get", "pod", pod.Name, "-o", "jsonpath={.status.containerStatuses[0].user.linux.uid}")
	if err == nil && out != "" && out != "65532" {
		t.Errorf("agent ran as uid %s, want 65532", out)
	}
}
