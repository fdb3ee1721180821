package obs

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// TestMetricsServerTimeouts: the metrics server closes a connection whose
// header stalls and a keep-alive connection left idle.
func TestMetricsServerTimeouts(t *testing.T) {
	oldHeader, oldIdle := readHeaderTimeout, idleTimeout
	readHeaderTimeout, idleTimeout = 100*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { readHeaderTimeout, idleTimeout = oldHeader, oldIdle })

	addr, err := ServeMetrics(t.Context(), "127.0.0.1:0", prometheus.NewRegistry(), testkit.Logger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("half a header", func(t *testing.T) {
		c := dial(t)
		fmt.Fprint(c, "GET /metrics HTTP/1.1\r\nHost: m\r\n")
		testkit.WaitClosed(t, c, 10*time.Second)
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c := dial(t)
		fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("first request: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("/healthz: got %s close=%v, want 200 kept alive", resp.Status, resp.Close)
		}
		testkit.WaitClosed(t, c, 10*time.Second)
	})
}
