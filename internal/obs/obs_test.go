package obs

import (
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
	t.Run("half a header", func(t *testing.T) { testkit.ExpectHeaderTimeout(t, addr.String(), "/metrics") })
	t.Run("idle keep-alive", func(t *testing.T) {
		if resp := testkit.ExpectIdleTimeout(t, addr.String(), "/healthz"); resp.StatusCode != http.StatusOK {
			t.Errorf("/healthz: got %s, want 200", resp.Status)
		}
	})
}
