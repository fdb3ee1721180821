package cluster

import (
	"context"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// WatchGatewayPods calls changed whenever a gateway pod in ns is added,
// changes (ready, terminating) or goes, until ctx ends: a workstation on
// the UDP transport learns of a replaced gateway pod within seconds
// instead of at its next registration. changed carries no detail; the
// caller looks (WaitGatewayReady). It is also called each time the watch
// (re)starts, so nothing that happened while it was down is missed.
// Errors are retried with backoff; it returns only when ctx ends.
func WatchGatewayPods(ctx context.Context, client kubernetes.Interface, ns string, changed func(), log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	backoff := watchBackoffMin
	for ctx.Err() == nil {
		w, err := client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: GatewaySelector})
		if err != nil {
			log.Debug("watch gateway pods", "namespace", ns, "err", err)
			if !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, watchBackoffMax)
			continue
		}
		started := time.Now()
		changed()
		clean := watchPodEvents(ctx, w, changed)
		if clean || time.Since(started) > watchBackoffMax {
			backoff = watchBackoffMin
		}
		if !clean && !sleepCtx(ctx, backoff) {
			return
		}
	}
}

// watchPodEvents calls changed per event until the watch ends; it reports
// whether it ended cleanly (the server closed it, as it does every few
// minutes).
func watchPodEvents(ctx context.Context, w watch.Interface, changed func()) bool {
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case ev, ok := <-w.ResultChan():
			if !ok {
				return true
			}
			if ev.Type == watch.Error {
				return false
			}
			if ev.Type != watch.Bookmark {
				changed()
			}
		}
	}
}
