package sidecar

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// TestHTTPModeHeaderTimeout: in isolated (HTTP) mode a client that sends the
// request line and part of the header, then stalls, is disconnected after the
// header timeout instead of holding the connection forever.
func TestHTTPModeHeaderTimeout(t *testing.T) {
	old := readHeaderTimeout
	readHeaderTimeout = 100 * time.Millisecond
	t.Cleanup(func() { readHeaderTimeout = old })

	e := isolatedEnv(t)
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: web\r\nX-Half: ")
	testkit.WaitClosed(t, c, 10*time.Second)
}
