package cluster

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestWatchServiceNames(t *testing.T) {
	client := fake.NewClientset(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "frontend", Namespace: "app"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "elsewhere"}})
	// The fake's watch starts from "now", not from the list's resource
	// version as a real API server's does: a change made between the list
	// and the watch would be lost, so changes wait until it is open.
	watching := make(chan struct{}, 1)
	client.PrependWatchReactor("services", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w, err := client.Tracker().Watch(a.GetResource(), a.GetNamespace())
		select {
		case watching <- struct{}{}:
		default:
		}
		return true, w, err
	})
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
	<-watching
	if _, err := client.CoreV1().Services("app").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "app"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("api", "frontend")
	if err := client.CoreV1().Services("app").Delete(ctx, "frontend", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want("api")
}
