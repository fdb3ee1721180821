package testkit

import (
	"errors"
	"io"
	"net"
	"os"
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
