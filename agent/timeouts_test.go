package agent

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// TestServerTimeouts: the control API and the relay close a connection whose
// request header does not arrive within the header timeout, and a keep-alive
// connection that stays idle past the idle timeout.
func TestServerTimeouts(t *testing.T) {
	oldHeader, oldIdle := readHeaderTimeout, idleTimeout
	readHeaderTimeout, idleTimeout = 100*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { readHeaderTimeout, idleTimeout = oldHeader, oldIdle })

	servers := map[string]func(ctx context.Context, ln net.Listener) error{
		"control": func(ctx context.Context, ln net.Listener) error {
			c, _, _ := newTestControl(t)
			return c.Run(ctx, ln)
		},
		"relay": func(ctx context.Context, ln net.Listener) error {
			r := NewRelay(RelayConfig{Intercepts: NewIntercepts(0, nil), Auth: testSidecarAuth, Pods: testSidecarPods, Dial: (&net.Dialer{}).DialContext})
			return r.Run(ctx, ln)
		},
	}
	for name, run := range servers {
		addr := func(t *testing.T) string {
			ln := listen(t)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- run(ctx, ln) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			})
			return ln.Addr().String()
		}
		t.Run(name+"/half a header", func(t *testing.T) { testkit.ExpectHeaderTimeout(t, addr(t), "/v1/nothing") })
		t.Run(name+"/idle keep-alive", func(t *testing.T) { testkit.ExpectIdleTimeout(t, addr(t), "/v1/nothing") })
	}
}
