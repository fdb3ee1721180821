package proxy

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

// TestHandshakeTimeouts: a SOCKS5 client that stalls in the greeting or the
// request, and an HTTP proxy client that stalls in a header or idles on a
// keep-alive connection, are disconnected instead of holding a connection.
func TestHandshakeTimeouts(t *testing.T) {
	oldHandshake, oldIdle := handshakeTimeout, httpIdleTimeout
	handshakeTimeout, httpIdleTimeout = 100*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { handshakeTimeout, httpIdleTimeout = oldHandshake, oldIdle })

	e := newTestEnv(t)
	s := newServer(t, e.config(t))
	socks, err := s.ListenSOCKS("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hp, err := s.ListenHTTP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dial := func(t *testing.T, addr net.Addr) net.Conn {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("socks half a greeting", func(t *testing.T) {
		c := dial(t, socks)
		c.Write([]byte{socksVersion, 2, methodNoAuth})
		testkit.WaitClosed(t, c, 10*time.Second)
	})
	t.Run("socks half a request", func(t *testing.T) {
		c := socksHandshake(t, socks.String())
		defer c.Close()
		c.Write([]byte{socksVersion, 1, 0, 1, 127})
		testkit.WaitClosed(t, c, 10*time.Second)
	})
	t.Run("http half a header", func(t *testing.T) {
		c := dial(t, hp)
		fmt.Fprint(c, "CONNECT echo:7 HTTP/1.1\r\nHost: echo:7\r\n")
		testkit.WaitClosed(t, c, 10*time.Second)
	})
	t.Run("http idle keep-alive", func(t *testing.T) {
		c := dial(t, hp)
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
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
