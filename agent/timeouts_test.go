package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
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
			r := NewRelay(RelayConfig{Intercepts: NewIntercepts(0, nil), Token: "tok", Dial: (&net.Dialer{}).DialContext})
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
		t.Run(name+"/half a header", func(t *testing.T) {
			c := dial(t, addr(t))
			fmt.Fprint(c, "GET /v1/nothing HTTP/1.1\r\nHost: gw\r\n")
			testkit.WaitClosed(t, c, 10*time.Second)
		})
		t.Run(name+"/idle keep-alive", func(t *testing.T) {
			c := dial(t, addr(t))
			fmt.Fprint(c, "GET /v1/nothing HTTP/1.1\r\nHost: gw\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("first request: %v", err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Close {
				t.Fatalf("the server closes after the first request (%s): nothing to prove about idle connections", resp.Status)
			}
			testkit.WaitClosed(t, c, 10*time.Second)
		})
	}
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
