package cluster

import (
	"context"
	"log/slog"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// ServiceChangeFunc receives one batch of changes from WatchServices:
// changed holds Services that are new or differ from the last call (sorted
// by name), deleted the names of Services that are gone.
type ServiceChangeFunc func(changed []*corev1.Service, deleted []string)

// Backoff bounds for WatchServices: a failed list or a watch that ends in an
// error waits watchBackoffMin, doubling up to watchBackoffMax.
const (
	watchBackoffMin = 500 * time.Millisecond
	watchBackoffMax = 10 * time.Second
)

// WatchServices keeps apply told about the Services of ns until ctx ends:
// it lists them (the first call of apply comes after the first successful
// list, with every Service, possibly none), then watches, calling apply once
// per event. When the watch ends or fails it lists again and reports only
// the difference from what apply has seen, so a change missed while the
// watch was down is still reported. Errors are retried with backoff; it
// returns only when ctx ends.
func WatchServices(ctx context.Context, client kubernetes.Interface, ns string, apply ServiceChangeFunc, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	known := map[string]*corev1.Service{}
	first := true
	backoff := watchBackoffMin
	failing := false
	wait := func() bool {
		ok := sleepCtx(ctx, backoff)
		backoff = min(2*backoff, watchBackoffMax)
		return ok
	}
	for ctx.Err() == nil {
		list, err := client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing { // once per streak: the API server may be away for a while
				log.Warn("list services failed; retrying", "namespace", ns, "err", err)
				failing = true
			} else {
				log.Debug("list services", "namespace", ns, "err", err)
			}
			if !wait() {
				return
			}
			continue
		}
		failing = false
		changed, deleted := diffServices(known, list.Items)
		if first || len(changed) > 0 || len(deleted) > 0 {
			apply(changed, deleted)
			first = false
		}
		w, err := client.CoreV1().Services(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
		if err != nil {
			log.Debug("watch services", "namespace", ns, "err", err)
			if !wait() {
				return
			}
			continue
		}
		started := time.Now()
		clean := watchServiceEvents(ctx, w, known, apply, log)
		if clean || time.Since(started) > watchBackoffMax {
			backoff = watchBackoffMin // a healthy watch: the next failure starts afresh
		}
		if clean {
			continue // the server ended the watch, as it does every few minutes
		}
		if !wait() {
			return
		}
	}
}

// watchServiceEvents feeds w's events to apply until the watch ends. It
// reports whether it ended cleanly (channel closed) rather than with an
// error event or ctx.
func watchServiceEvents(ctx context.Context, w watch.Interface, known map[string]*corev1.Service, apply ServiceChangeFunc, log *slog.Logger) bool {
	defer w.Stop()
	for {
		var ev watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return false
		case ev, ok = <-w.ResultChan():
		}
		if !ok {
			return true
		}
		svc, isSvc := ev.Object.(*corev1.Service)
		if !isSvc || ev.Type == watch.Error {
			log.Debug("watch services ended; listing again", "event", ev.Type, "object", ev.Object)
			return false
		}
		switch ev.Type {
		case watch.Added, watch.Modified:
			known[svc.Name] = svc
			apply([]*corev1.Service{svc}, nil)
		case watch.Deleted:
			if _, ok := known[svc.Name]; ok {
				delete(known, svc.Name)
				apply(nil, []string{svc.Name})
			}
		}
	}
}

// diffServices updates known to items and returns what changed.
func diffServices(known map[string]*corev1.Service, items []corev1.Service) (changed []*corev1.Service, deleted []string) {
	seen := map[string]bool{}
	for i := range items {
		s := &items[i]
		seen[s.Name] = true
		old, ok := known[s.Name]
		if ok && old.ResourceVersion == s.ResourceVersion && equality.Semantic.DeepEqual(old.Spec, s.Spec) {
			continue
		}
		known[s.Name] = s
		changed = append(changed, s)
	}
	for name := range known {
		if !seen[name] {
			delete(known, name)
			deleted = append(deleted, name)
		}
	}
	sort.Slice(changed, func(i, j int) bool { return changed[i].Name < changed[j].Name })
	sort.Strings(deleted)
	return changed, deleted
}
