package session

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestInterceptProgressStreams runs a real interceptor behind the real
// socket API: the client's callback gets the steps while the session is
// still waiting for the rollout. The rollout here finishes only because the
// callback, told "0 of 1 replicas updated", plays the deployment
// controller: an answer buffered until the end would never come.
func TestInterceptProgressStreams(t *testing.T) {
	cs, g := apiWorld(), newFakeGateway(t)
	ic := testInterceptor(t, cs, g, interceptConfig{RolloutTimeout: time.Minute})
	c, _, stop := testAPI(t, apiHandlers{intercept: ic.Intercept})
	defer stop()

	var got []InterceptEvent
	info, err := c.Intercept(t.Context(), InterceptSpec{Service: "api", LocalPort: 8080, Holder: "alice@laptop"}, func(e InterceptEvent) {
		got = append(got, e)
		if e.Text != "0 of 1 replicas updated" {
			return
		}
		d, err := cs.AppsV1().Deployments("app").Get(t.Context(), "api", metav1.GetOptions{})
		if err != nil {
			t.Error(err)
			return
		}
		d.Status.Replicas, d.Status.UpdatedReplicas, d.Status.ReadyReplicas, d.Status.AvailableReplicas = 1, 1, 1, 1
		if _, err := cs.AppsV1().Deployments("app").UpdateStatus(t.Context(), d, metav1.UpdateOptions{}); err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		t.Fatalf("intercept: %v", err)
	}
	if info.Service != "api" || info.Workload != "Deployment/api" || info.LocalPort != 8080 {
		t.Errorf("info: got %+v, want api's intercept", info)
	}
	want := []InterceptEvent{
		{Done: true, Text: "patched deployment/api"},
		{Text: "0 of 1 replicas updated"},
		{Done: true, Text: "every pod of deployment/api runs the sidecar"},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
}

// TestInterceptStreamErrors: after events, the session's error is still the
// client's one line; an answer cut short says so.
func TestInterceptStreamErrors(t *testing.T) {
	c, _, stop := testAPI(t, apiHandlers{intercept: func(_ context.Context, spec InterceptSpec, report func(InterceptEvent)) (InterceptInfo, error) {
		report(InterceptEvent{Done: true, Text: "patched deployment/api"})
		return InterceptInfo{}, errors.New("intercept api: deployment/api: pod api-2: container \"api\" keeps crashing (nothing left patched)")
	}})
	defer stop()
	var got []InterceptEvent
	_, err := c.Intercept(t.Context(), InterceptSpec{Service: "api", LocalPort: 8080}, func(e InterceptEvent) { got = append(got, e) })
	if want := `intercept api: deployment/api: pod api-2: container "api" keeps crashing (nothing left patched)`; err == nil || err.Error() != want {
		t.Errorf("got %v, want the session's one line %q", err, want)
	}
	if len(got) != 1 {
		t.Errorf("events: got %v, want the one step before the error", got)
	}

	if _, err := readInterceptStream(strings.NewReader(`{"event":{"text":"0 of 1 replicas updated"}}`+"\n"), nil); err == nil || !strings.Contains(err.Error(), "ended without a result") {
		t.Errorf("cut short: got %v, want an error saying the answer ended without a result", err)
	}
}

// TestInterceptClientReadsOldAnswer: a session started by an earlier
// bridgetun answers with one JSON object; the client still understands it.
func TestInterceptClientReadsOldAnswer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(InterceptInfo{Service: "api", LocalPort: 8080})
	})}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	defer func() { srv.Close(); <-done }()
	info, err := NewClient(path).Intercept(t.Context(), InterceptSpec{Service: "api", LocalPort: 8080}, nil)
	if err != nil || info.Service != "api" || info.LocalPort != 8080 {
		t.Errorf("got %+v, %v; want api's intercept", info, err)
	}
}
