package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// Fuzz topology (all loopback): each fuzz input is written to a real proxy
// listener, the write side half-closed, and everything the proxy answers
// read back within fuzzDeadline.
//
//	fuzz input ──► proxy (127.0.0.1:0) ──Config.Dial──► port 80: HTTP server
//	                                                    other:   TCP echo
//
// Names: "echo" and anything under ".svc" resolve to 10.96.0.21; the rest
// fail. Denied: loopback and 10.96.0.66.

const (
	fuzzUser     = "alice"
	fuzzPass     = "s3cret"
	fuzzDeadline = 5 * time.Second
)

// fuzzProxy is a proxy Server listening on loopback and the number of
// dials it made.
type fuzzProxy struct {
	srv         *Server
	socks, http string
	dials       atomic.Int64
}

// newFuzzProxy starts a proxy (with credentials if auth) whose Dial reaches
// the loopback backends; the backends and proxy are closed with tb.
func newFuzzProxy(tb testing.TB, auth bool) *fuzzProxy {
	tb.Helper()
	echo, web := fuzzBackends(tb)
	p := &fuzzProxy{}
	cfg := Config{
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			p.dials.Add(1)
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return nil, fmt.Errorf("fuzz dial %q: not an IP literal: %w", address, err)
			}
			real := echo
			if ap.Port() == 80 {
				real = web
			}
			var d net.Dialer
			if network == "udp" {
				return d.DialContext(ctx, "udp", "127.0.0.1:9") // discard; nothing needs to answer
			}
			return d.DialContext(ctx, network, real)
		},
		Resolve: fuzzResolve,
		Deny: func(a netip.Addr) bool {
			return a.IsLoopback() || a.IsUnspecified() || a == netip.MustParseAddr("10.96.0.66")
		},
	}
	if auth {
		cfg.Username, cfg.Password = fuzzUser, fuzzPass
	}
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	sa, err := s.ListenSOCKS("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ha, err := s.ListenHTTP("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p.srv, p.socks, p.http = s, sa.String(), ha.String()
	return p
}

func fuzzResolve(_ context.Context, host string) ([]netip.Addr, error) {
	if host == "echo" || (len(host) > 4 && host[len(host)-4:] == ".svc") {
		return []netip.Addr{netip.MustParseAddr("10.96.0.21")}, nil
	}
	return nil, fmt.Errorf("%s: no such host", host)
}

// fuzzBackends starts a TCP echo (until EOF) and an HTTP server on loopback.
func fuzzBackends(tb testing.TB) (echo, web string) {
	tb.Helper()
	el, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { el.Close() })
	go func() {
		for {
			c, err := el.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(fuzzDeadline))
				io.Copy(c, c)
			}()
		}
	}()
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "web "+r.URL.Path)
	}), ReadHeaderTimeout: fuzzDeadline}
	go hs.Serve(hl)
	tb.Cleanup(func() { hs.Close() })
	return el.Addr().String(), hl.Addr().String()
}

// exchange writes in to addr, half-closes and returns all that comes back;
// it fails if the server neither answers nor closes within fuzzDeadline.
func exchange(t *testing.T, addr string, in []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(fuzzDeadline))
	// A server that stops reading early (bad greeting) may reset the
	// connection under a long write: what it answered before still counts.
	_, werr := c.Write(in)
	if werr == nil {
		c.(*net.TCPConn).CloseWrite()
	}
	out, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("proxy neither finished nor closed within %s for input %q (answered %q)", fuzzDeadline, in, out)
	}
	return out
}
