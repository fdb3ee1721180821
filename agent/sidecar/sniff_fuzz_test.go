package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// sniffSeeds are first bytes of connections an isolated Service sees:
// HTTP/1.x and h2c requests, and what must pass through raw.
var sniffSeeds = [][]byte{
	[]byte("GET / HTTP/1.1\r\nHost: web\r\n\r\n"),
	[]byte("GET /orders?id=7 HTTP/1.1\r\nHost: web.shop\r\nKubernetes-Route-As: alice\r\n\r\n"),
	[]byte("POST /orders HTTP/1.1\r\nHost: web\r\nkubernetes-route-as: alice\r\nContent-Length: 5\r\n\r\nhello"),
	[]byte("GET / HTTP/1.1\r\nHost: web\r\nKubernetes-Route-As: bob\r\n\r\n"),
	[]byte("GET / HTTP/1.1\r\nHost: web\r\nKubernetes-Route-As: alice\r\nKubernetes-Route-As: bob\r\n\r\n"),
	[]byte("GET / HTTP/1.1\r\nHost: web\r\nKubernetes-Route-As: \r\n\r\n"),
	[]byte("GET / HTTP/1.0\r\n\r\n"),
	[]byte("OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n"),
	[]byte("GET / HTTP/2.0\r\n\r\n"),
	[]byte("GET /\r\n"),
	[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
	[]byte("PRI * HTTP/2.0\r\nXX"),
	[]byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), // TLS ClientHello
	[]byte("\x00\x00\x00\x08\x04\xd2\x16\x2f"),             // PostgreSQL SSLRequest
	[]byte("SSH-2.0-OpenSSH_9.6\r\n"),
	[]byte("*1\r\n$4\r\nPING\r\n"), // Redis
	[]byte("GET / HTTP/1.1\x00\r\n"),
	[]byte("VERYLONGMETHODNAMEVERYLONGMETHODNAME / HTTP/1.1\r\n"),
	[]byte("GET /" + strings.Repeat("a", maxSniffLen) + " HTTP/1.1\r\n"), // a request line past the limit
}

// FuzzSniff checks the HTTP sniffer. The first byte sets the size of the
// chunks the input arrives in (over a real net.Pipe). Invariants: once
// classify decides a prefix, every longer prefix gets the same verdict (so
// the verdict does not depend on how the bytes were split into reads);
// sniff returns a prefix of the input, decides as classify does, and stops
// reading near maxSniffLen.
func FuzzSniff(f *testing.F) {
	seeds := make([][]byte, 0, 2*len(sniffSeeds))
	for _, s := range sniffSeeds {
		seeds = append(seeds, append([]byte{0}, s...), append([]byte{3}, s...))
	}
	testkit.Seeds(f, seeds...)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		chunk, in := int(data[0])+1, data[1:]
		first, at := undecided, 0
		for i := 1; i <= len(in); i++ {
			v := classify(in[:i])
			if first == undecided && v != undecided {
				first, at = v, i
			}
			if first != undecided && v != first {
				t.Fatalf("classify(%q) = %v, but its prefix %q was already %v", in[:i], v, in[:at], first)
			}
		}
		if len(in) >= maxSniffLen+1 && classify(in) == undecided {
			t.Fatalf("classify of %d bytes is still undecided (limit %d)", len(in), maxSniffLen)
		}

		client, server := net.Pipe()
		defer server.Close()
		go func() {
			defer client.Close()
			for b := in; len(b) > 0; {
				n := min(chunk, len(b))
				if _, err := client.Write(b[:n]); err != nil {
					return
				}
				b = b[n:]
			}
		}()
		head, ok := sniff(server, 5*time.Second)
		if !bytes.HasPrefix(in, head) {
			t.Fatalf("sniff returned %q, not a prefix of the input %q", head, in)
		}
		if want := classify(head) == isHTTP; ok != want {
			t.Fatalf("sniff(%q) = %v, classify says %v", head, ok, classify(head))
		}
		if ok && first != isHTTP {
			t.Fatalf("sniff took %q for HTTP; classify of the whole input first decided %v", in, first)
		}
		if len(head) > maxSniffLen+chunk {
			t.Fatalf("sniff read %d bytes, past the %d-byte limit by more than one %d-byte read", len(head), maxSniffLen, chunk)
		}
	})
}

// FuzzIsolationRouter writes arbitrary bytes to a running isolated
// sidecar (real loopback listeners: an original and a workstation, each an
// HTTP server that names itself; the route table isolates "alice").
// Invariants: the sidecar finishes within the deadline once the client
// half-closes; an answer the workstation served is marked local and only
// ever follows a request that carried Kubernetes-Route-As: alice; a request
// the sidecar answered as HTTP/1 parses as a response.
func FuzzIsolationRouter(f *testing.F) {
	testkit.Seeds(f, sniffSeeds...)
	original, ws := namedHTTPServer(f, "original"), namedHTTPServer(f, "workstation")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	state := &RouteState{}
	state.Set(api.RouteTable{Version: 1, Routes: []api.Route{{ID: "a1", Target: ws, RouteAs: "alice", Holder: "alice@laptop"}}})
	var d net.Dialer
	sc, err := New(Config{
		Listener: ln, Original: original, Routes: state,
		Dial:         func(ctx context.Context, target string) (net.Conn, error) { return d.DialContext(ctx, "tcp", target) },
		SniffTimeout: 200 * time.Millisecond,
	})
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	f.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			f.Errorf("sidecar Run: %v", err)
		}
	})
	addr := ln.Addr().String()
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(in); err == nil {
			c.(*net.TCPConn).CloseWrite()
		}
		out, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("sidecar neither finished nor closed within 5s for %q (answered %q)", in, out)
		}
		if bytes.Contains(out, []byte("served by workstation")) && !routedAs(in, "alice") {
			t.Fatalf("the workstation answered %q, which carries no Kubernetes-Route-As: alice", in)
		}
		if !bytes.HasPrefix(out, []byte("HTTP/1.")) {
			return // h2c frames, or a raw pass-through
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
		if err != nil {
			t.Fatalf("answer to %q is not an HTTP response: %v (%q)", in, err, out)
		}
		resp.Body.Close()
		if resp.Header.Get(api.ServedByHeader) == routeLocal && !routedAs(in, "alice") {
			t.Fatalf("answer marked local for %q, which carries no Kubernetes-Route-As: alice", in)
		}
	})
}

// routedAs reports whether raw request bytes hold a route-as header line
// naming v (any case of the name, as net/http reads it).
func routedAs(in []byte, v string) bool {
	lower := strings.ToLower(string(in))
	return strings.Contains(lower, strings.ToLower(api.RouteAsHeader)) && strings.Contains(string(in), v)
}

// namedHTTPServer is a loopback HTTP/1.1 + h2c server answering "served
// by NAME".
func namedHTTPServer(tb testing.TB, name string) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "served by "+name)
	}), ReadHeaderTimeout: 5 * time.Second}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
