package session

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testAPI serves h on a socket in a temp dir until the test ends.
func testAPI(t *testing.T, h apiHandlers) (*Client, string, func()) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "bridgetun.sock")
	a, err := listenAPI(Paths{Socket: path}, h)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("api Run: %v", err)
		}
	}
	return NewClient(path), path, stop
}

func TestAPISocketOwnerOnly(t *testing.T) {
	_, path, stop := testAPI(t, apiHandlers{status: func() Status { return Status{} }})
	defer stop()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("socket mode: got %o, want 600", got)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("socket dir: got %v, %v; want mode 700", fi.Mode().Perm(), err)
	}
}

// TestAPICalls runs each call of the socket API through the client.
func TestAPICalls(t *testing.T) {
	downed := make(chan struct{})
	c, _, stop := testAPI(t, apiHandlers{
		status: func() Status { return Status{State: "connected", PID: os.Getpid(), TunnelAddress: "198.19.0.7/32"} },
		down:   func() { close(downed) },
		intercept: func(_ context.Context, spec InterceptSpec, _ func(InterceptEvent)) (InterceptInfo, error) {
			if spec.Service == "busy" {
				return InterceptInfo{}, errors.New("intercept refused: busy is intercepted by bob")
			}
			return InterceptInfo{Service: spec.Service, LocalPort: spec.LocalPort}, nil
		},
		leave: func(service string) (string, error) {
			if service != "api" {
				return "", errors.New("leave: " + service + " is not intercepted by this session")
			}
			return "Deployment/api runs its original pod template again", nil
		},
	})
	defer stop()
	ctx := t.Context()
	st, err := c.Status(ctx)
	if err != nil || st.State != "connected" || st.TunnelAddress != "198.19.0.7/32" {
		t.Errorf("status: got %+v, %v", st, err)
	}
	info, err := c.Intercept(ctx, InterceptSpec{Service: "api", LocalPort: 8080}, nil)
	if err != nil || info.Service != "api" || info.LocalPort != 8080 {
		t.Errorf("intercept: got %+v, %v", info, err)
	}
	if _, err := c.Intercept(ctx, InterceptSpec{Service: "busy", LocalPort: 8080}, nil); err == nil || err.Error() != "intercept refused: busy is intercepted by bob" {
		t.Errorf("refused intercept: got %v, want the session's one line", err)
	}
	if msg, err := c.Leave(ctx, "api"); err != nil || !strings.Contains(msg, "original pod template") {
		t.Errorf("leave: got %q, %v", msg, err)
	}
	if _, err := c.Leave(ctx, "web"); err == nil || !strings.Contains(err.Error(), "web is not intercepted") {
		t.Errorf("leave of another: got %v", err)
	}
	// Down returns once the session's process is gone; this test's own
	// process stays, so bound it and check the handler ran.
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_ = c.Down(dctx)
	select {
	case <-downed:
	case <-time.After(5 * time.Second):
		t.Fatal("down did not reach the session")
	}
}

// TestAPIRunRemovesSocket: after Run returns the socket is gone and the
// client says "not up".
func TestAPIRunRemovesSocket(t *testing.T) {
	c, path, stop := testAPI(t, apiHandlers{status: func() Status { return Status{} }})
	stop()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after Run: got %v, want it removed", err)
	}
	if _, err := c.Status(t.Context()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("status: got %v, want ErrNotRunning", err)
	}
}

func TestAPIRejectsBadBody(t *testing.T) {
	c, _, stop := testAPI(t, apiHandlers{intercept: func(context.Context, InterceptSpec, func(InterceptEvent)) (InterceptInfo, error) {
		t.Error("handler called for a bad body")
		return InterceptInfo{}, nil
	}})
	defer stop()
	req, _ := newRawRequest(t.Context(), "POST", "http://bridgetun/intercept", "{not json")
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("status: got %d, want 400", resp.StatusCode)
	}
}
