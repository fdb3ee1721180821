package testkit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
)

// WaitClosed reads c until the peer closes it and returns what it read; it
// fails tb if c is still open after within (a generous bound, not a timer the
// test relies on).
func WaitClosed(tb testing.TB, c net.Conn, within time.Duration) []byte {
	tb.Helper()
	if err := c.SetReadDeadline(time.Now().Add(within)); err != nil {
		tb.Fatalf("set read deadline: %v", err)
	}
	b, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		tb.Fatalf("connection to %s still open after %v, want it closed by the server (read %q)", c.RemoteAddr(), within, b)
	}
	// EOF (nil from ReadAll) or a reset: the server closed it.
	return b
}

// Dial connects to addr over TCP and closes the connection when tb ends.
func Dial(tb testing.TB, addr string) net.Conn {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// ExpectHeaderTimeout sends the start of an HTTP request to addr, without
// the blank line that ends its header, and fails tb unless the server
// closes the connection (its ReadHeaderTimeout).
func ExpectHeaderTimeout(tb testing.TB, addr, path string) {
	tb.Helper()
	c := Dial(tb, addr)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\n", path)
	WaitClosed(tb, c, 10*time.Second)
}

// ExpectIdleTimeout makes one keep-alive HTTP request to addr and fails tb
// unless the server offers to keep the connection and then closes it while
// it idles (its IdleTimeout). It returns the response (body drained) for
// further checks.
func ExpectIdleTimeout(tb testing.TB, addr, path string) *http.Response {
	tb.Helper()
	c := Dial(tb, addr)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		tb.Fatalf("first request: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Close {
		tb.Fatalf("the server closes after the first request (%s): nothing to prove about idle connections", resp.Status)
	}
	WaitClosed(tb, c, 10*time.Second)
	return resp
}

// EchoServer serves a TCP echo on loopback until the test ends, when it
// closes the listener and waits for its connections' goroutines; it
// returns the address.
func EchoServer(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}
