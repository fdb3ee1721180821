package cluster

import (
	"context"
	"iter"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// WatchServiceNames calls set with the names of the Services in ns now and
// after every change, until ctx ends; the split resolver routes bare names
// by it. Errors are retried with a short backoff (a watch that drops is
// normal), so it never returns early.
func WatchServiceNames(ctx context.Context, client kubernetes.Interface, ns string, set func([]string), log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		list, err := client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			log.Debug("list services", "namespace", ns, "err", err)
			if !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = 500 * time.Millisecond
		names := map[string]bool{}
		for _, s := range list.Items {
			names[s.Name] = true
		}
		set(keys(names))
		w, err := client.CoreV1().Services(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
		if err != nil {
			if !sleepCtx(ctx, backoff) {
				return
			}
			continue
		}
		for ev := range eventsUntil(ctx, w) {
			svc, ok := ev.Object.(*corev1.Service)
			if !ok {
				break // an error event: list again
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				names[svc.Name] = true
			case watch.Deleted:
				delete(names, svc.Name)
			}
			set(keys(names))
		}
		w.Stop()
	}
}

// WatchNamespaceNames is WatchServiceNames for namespaces (so "svc.ns"
// routes to the cluster). A user who may not list namespaces gets an empty
// set, logged once: the connected namespace still works.
func WatchNamespaceNames(ctx context.Context, client kubernetes.Interface, set func([]string), log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for ctx.Err() == nil {
		list, err := client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			log.Info("cannot list namespaces; only the connected one resolves as <svc>.<ns>", "err", err)
			return
		}
		names := map[string]bool{}
		for _, n := range list.Items {
			names[n.Name] = true
		}
		set(keys(names))
		w, err := client.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
		if err != nil {
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		for ev := range eventsUntil(ctx, w) {
			n, ok := ev.Object.(*corev1.Namespace)
			if !ok {
				break
			}
			if ev.Type == watch.Deleted {
				delete(names, n.Name)
			} else {
				names[n.Name] = true
			}
			set(keys(names))
		}
		w.Stop()
	}
}

// eventsUntil yields w's events until the watch ends or ctx does: the
// watcher's channel is not promised to close when ctx ends (a fake's never
// does), and a watch goroutine must not outlive its owner.
func eventsUntil(ctx context.Context, w watch.Interface) iter.Seq[watch.Event] {
	return func(yield func(watch.Event) bool) {
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.ResultChan():
				if !ok || !yield(ev) {
					return
				}
			}
		}
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
