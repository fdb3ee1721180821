package session

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// FuzzAPI writes arbitrary bytes to the session's real socket (owner-only
// listener, peer-credential check, the API's handlers over fakes).
// Invariants: the server finishes within the deadline once the client
// half-closes; its first answer is a well-formed HTTP response; a handler
// runs only for its own method and path, and intercept only with a spec
// that decoded.
func FuzzAPI(f *testing.F) {
	req := func(method, target, body string) string {
		s := method + " " + target + " HTTP/1.1\r\nHost: bridgetun\r\n"
		if body != "" {
			s += "Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n"
		}
		return s + "\r\n" + body
	}
	spec := `{"service":"api","port":"http","local_port":8080,"route_as":"alice","holder":"alice@laptop","grace":900000000000}`
	testkit.Seeds(f,
		[]byte(req("GET", "/status", "")),
		[]byte(req("POST", "/intercept", spec)),
		[]byte(req("POST", "/intercept", `{"service":"api","local_port":"8080"}`)),
		[]byte(req("POST", "/intercept", `{"service":`)),
		[]byte(req("POST", "/intercept", `[]`)),
		[]byte(req("POST", "/leave?service=api", "")),
		[]byte(req("POST", "/leave?service=%zz", "")),
		[]byte(req("POST", "/down", "")),
		[]byte(req("GET", "/down", "")),
		[]byte(req("DELETE", "/status", "")),
		[]byte(req("GET", "/../status", "")),
		[]byte(req("GET", "/status", "")+req("POST", "/leave?service=web", "")),
		[]byte("POST /intercept HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ser\r\n0\r\n\r\n"),
		[]byte("GET /status HTTP/1.1\r\n"),
		[]byte("SSH-2.0-OpenSSH_9.6\r\n"),
	)
	var intercepts, leaves, downs atomic.Int64
	path := filepath.Join(f.TempDir(), "run", "bridgetun.sock")
	a, err := listenAPI(Paths{Socket: path}, apiHandlers{
		status: func() Status { return Status{State: "connected", Namespace: "shop"} },
		down:   func() { downs.Add(1) },
		intercept: func(_ context.Context, s InterceptSpec, ev func(InterceptEvent)) (InterceptInfo, error) {
			intercepts.Add(1)
			if s.Service == "" {
				return InterceptInfo{}, errors.New("intercept: name the Service")
			}
			ev(InterceptEvent{})
			return InterceptInfo{Service: s.Service}, nil
		},
		leave: func(service string) (string, error) {
			leaves.Add(1)
			if service == "" {
				return "", errors.New("leave: name the Service")
			}
			return "left " + service, nil
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	f.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			f.Errorf("api Run: %v", err)
		}
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		i0, l0, d0 := intercepts.Load(), leaves.Load(), downs.Load()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(in); err == nil {
			c.(*net.UnixConn).CloseWrite()
		}
		out, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("socket API neither finished nor closed within 5s for %q (answered %q)", in, out)
		}
		for name, ran := range map[string]bool{
			"POST /intercept": intercepts.Load() > i0,
			"POST /leave":     leaves.Load() > l0,
			"POST /down":      downs.Load() > d0,
		} {
			if ran && !bytes.Contains(in, []byte(name)) {
				t.Fatalf("%s's handler ran for %q", name, in)
			}
		}
		if len(out) == 0 {
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
		if err != nil {
			t.Fatalf("answer to %q is not an HTTP response: %v (%q)", in, err, out)
		}
		resp.Body.Close()
	})
}
