package session

import (
	"bufio"
	"fmt"
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
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("half a header", func(t *testing.T) {
		c := dial(t)
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: api\r\n")
		testkit.WaitClosed(t, c, 10*time.Second)
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c := dial(t)
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: api\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("first request: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Close {
			t.Fatalf("closed after the first request (%s), want kept alive", resp.Status)
		}
		testkit.WaitClosed(t, c, 10*time.Second)
	})
}
