package cluster

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestWatchServiceNames(t *testing.T) {
	client := fake.NewClientset(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "frontend", Namespace: "app"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "elsewhere"}})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	got := make(chan []string, 16)
	go WatchServiceNames(ctx, client, "app", func(n []string) { slices.Sort(n); got <- n }, nil)
	want := func(w ...string) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case n := <-got:
				if slices.Equal(n, w) {
					return
				}
			case <-deadline:
				t.Fatalf("service names: never got %v", w)
			}
		}
	}
	want("frontend")
	if _, err := client.CoreV1().Services("app").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "app"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("api", "frontend")
	if err := client.CoreV1().Services("app").Delete(ctx, "frontend", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want("api")
}
