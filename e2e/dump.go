package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DumpOnFailure registers a cleanup that, if t failed, logs for each namespace its pods, events and every
// container's log tail, then the tails of the harness's component logs (/var/tmp/bridgetun-e2e/logs).
func (c *Cluster) DumpOnFailure(t testing.TB, namespaces ...string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, ns := range namespaces {
			c.dumpNamespace(ctx, t, ns)
		}
		c.dumpHarnessLogs(t, 20)
	})
}

func (c *Cluster) dumpNamespace(ctx context.Context, t testing.TB, ns string) {
	if out, err := c.RunKubectl(ctx, "-n", ns, "get", "pods,svc,endpointslices", "-o", "wide"); err == nil {
		t.Logf("=== %s: objects\n%s", ns, out)
	} else {
		t.Logf("=== %s: %v", ns, err)
	}
	if ev, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{}); err == nil {
		items := ev.Items
		sort.Slice(items, func(i, j int) bool { return items[i].LastTimestamp.Before(&items[j].LastTimestamp) })
		var b strings.Builder
		for _, e := range items {
			fmt.Fprintf(&b, "%s %s %s/%s: %s %s\n", e.LastTimestamp.Format(time.TimeOnly), e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
		t.Logf("=== %s: events\n%s", ns, b.String())
	}
	pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	tail := int64(50)
	for _, p := range pods.Items {
		for _, ctr := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
			b, err := c.Client.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: ctr.Name, TailLines: &tail}).DoRaw(ctx)
			if err != nil {
				t.Logf("=== %s/%s[%s] logs: %v", ns, p.Name, ctr.Name, err)
				continue
			}
			t.Logf("=== %s/%s[%s] logs (last %d lines)\n%s", ns, p.Name, ctr.Name, tail, b)
		}
	}
}

func (c *Cluster) dumpHarnessLogs(t testing.TB, lines int) {
	files, _ := filepath.Glob(filepath.Join(StateDir, "logs", "*.log"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		all := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
		if len(all) > lines {
			all = all[len(all)-lines:]
		}
		t.Logf("=== harness log %s (last %d lines)\n%s", f, lines, bytes.Join(all, []byte("\n")))
	}
}
