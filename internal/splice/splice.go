// Package splice copies between two connections both ways — the one relay
// loop the workstation, the gateway and the sidecar share.
package splice

import (
	"io"
	"net"
	"sync"
)

// Relay copies both ways, passing half-closes on, until both directions end.
// It does not close a or b.
func Relay(a, b net.Conn) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
}

// BufferedConn is a net.Conn whose first reads come from R (bytes a reader
// buffered past a protocol header), then from the Conn itself.
type BufferedConn struct {
	net.Conn
	R io.Reader
}

func (c *BufferedConn) Read(p []byte) (int, error) { return c.R.Read(p) }

// CloseWrite half-closes the underlying connection when it can.
func (c *BufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
