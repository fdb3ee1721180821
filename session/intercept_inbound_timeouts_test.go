package session

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// TestLocalURLServerTimeouts: the local URL's server closes a connection
// whose header stalls and a keep-alive connection left idle.
func TestLocalURLServerTimeouts(t *testing.T) {
	oldHeader, oldIdle := localURLHeaderTimeout, localURLIdleTimeout
	localURLHeaderTimeout, localURLIdleTimeout = 100*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { localURLHeaderTimeout, localURLIdleTimeout = oldHeader, oldIdle })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := localURLServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-served
	})
	t.Run("half a header", func(t *testing.T) { testkit.ExpectHeaderTimeout(t, ln.Addr().String(), "/") })
	t.Run("idle keep-alive", func(t *testing.T) { testkit.ExpectIdleTimeout(t, ln.Addr().String(), "/") })
}
