package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func watchedSvc(name string, ports ...int32) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "app"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.9"}}
	for _, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p, Protocol: corev1.ProtocolTCP})
	}
	return s
}

// render shows one call of the apply func for comparison:
// "changed=a:80,b:53/54 deleted=c".
func render(changed []*corev1.Service, deleted []string) string {
	var cs []string
	for _, s := range changed {
		var ps []string
		for _, p := range s.Spec.Ports {
			ps = append(ps, fmt.Sprint(p.Port))
		}
		cs = append(cs, s.Name+":"+strings.Join(ps, "/"))
	}
	return "changed=" + strings.Join(cs, ",") + " deleted=" + strings.Join(deleted, ",")
}

// TestWatchServices drives the helper through list, watch events, a watch
// error with changes missed meanwhile, and a failing list. The watch is a
// FakeWatcher the test controls, so a change made only in the store is seen
// only through a re-list.
func TestWatchServices(t *testing.T) {
	client := fake.NewClientset(watchedSvc("frontend", 80), watchedSvc("other", 1))
	if err := client.Tracker().Delete(corev1.SchemeGroupVersion.WithResource("services"), "app", "other"); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Services("elsewhere").Create(t.Context(), &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "far", Namespace: "elsewhere"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	watchers := make(chan *watch.FakeWatcher, 4)
	client.PrependWatchReactor("services", func(k8stesting.Action) (bool, watch.Interface, error) {
		w := watch.NewFake()
		watchers <- w
		return true, w, nil
	})
	var failLists atomic.Int32
	client.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failLists.Add(-1) >= 0 {
			return true, nil, errors.New("apiserver away")
		}
		return false, nil, nil
	})

	ctx, cancel := context.WithCancel(t.Context())
	batches := make(chan string, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		WatchServices(ctx, client, "app", func(c []*corev1.Service, d []string) { batches <- render(c, d) }, nil)
	}()
	defer func() {
		cancel()
		<-done
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case got := <-batches:
			if got != want {
				t.Fatalf("apply: got %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("apply: nothing within 10s, want %q", want)
		}
	}
	nextWatch := func() *watch.FakeWatcher {
		t.Helper()
		select {
		case w := <-watchers:
			return w
		case <-time.After(10 * time.Second):
			t.Fatal("no watch opened within 10s")
			return nil
		}
	}
	services := client.CoreV1().Services("app")

	expect("changed=frontend:80 deleted=")
	w := nextWatch()
	for _, step := range []struct {
		name string
		send func()
		want string
	}{
		{"added", func() { w.Add(watchedSvc("api", 8080)) }, "changed=api:8080 deleted="},
		{"modified", func() { w.Modify(watchedSvc("api", 8080, 9090)) }, "changed=api:8080/9090 deleted="},
		{"deleted", func() { w.Delete(watchedSvc("frontend", 80)) }, "changed= deleted=frontend"},
	} {
		step.send()
		select {
		case got := <-batches:
			if got != step.want {
				t.Fatalf("%s: got %q, want %q", step.name, got, step.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: nothing within 10s, want %q", step.name, step.want)
		}
	}

	// The store now: api (as modified) and db; frontend gone. Only a re-list
	// can tell the helper about db, and that api's second port went away.
	if err := services.Delete(ctx, "frontend", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*corev1.Service{watchedSvc("api", 8080), watchedSvc("db", 5432)} {
		if _, err := services.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	w.Error(&metav1.Status{Status: metav1.StatusFailure, Reason: metav1.StatusReasonExpired, Message: "too old resource version"})
	expect("changed=api:8080,db:5432 deleted=")

	// A list that fails twice, then works: the helper keeps trying and
	// reports what was deleted meanwhile.
	w = nextWatch()
	failLists.Store(2)
	if err := services.Delete(ctx, "api", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	w.Stop() // the server closes the watch: list again at once
	expect("changed= deleted=api")
	if got := failLists.Load(); got >= 0 {
		t.Errorf("failing lists left: got %d, want both used", got+1)
	}
	w = nextWatch()
	w.Add(watchedSvc("late", 53))
	expect("changed=late:53 deleted=")
}

func TestDiffServices(t *testing.T) {
	known := map[string]*corev1.Service{}
	a, b := watchedSvc("a", 80), watchedSvc("b", 53)
	for _, tc := range []struct {
		items []corev1.Service
		want  string
	}{
		{[]corev1.Service{*a, *b}, "changed=a:80,b:53 deleted="},
		{[]corev1.Service{*a, *b}, "changed= deleted="},
		{[]corev1.Service{*watchedSvc("a", 81), *b}, "changed=a:81 deleted="},
		{[]corev1.Service{*b}, "changed= deleted=a"},
		{nil, "changed= deleted=b"},
	} {
		c, d := diffServices(known, tc.items)
		if got := render(c, d); got != tc.want {
			t.Errorf("diff %v: got %q, want %q", names(tc.items), got, tc.want)
		}
	}
}

func names(items []corev1.Service) []string {
	var out []string
	for _, s := range items {
		out = append(out, s.Name)
	}
	return out
}
