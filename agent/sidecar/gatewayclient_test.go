package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/splice"
	"github.com/bridgetun/bridgetun/internal/testkit"

	"github.com/bridgetun/bridgetun/agent/api"
)

func TestWatchRoutesFollowsVersions(t *testing.T) {
	gw := newFakeGateway(t)
	gc := NewGatewayClient(GatewayClientConfig{Addr: gw.addr(), Token: staticToken(testToken), Log: testLogger(t)})
	got := make(chan api.RouteTable, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gc.WatchRoutes(ctx, "shop", "web", func(t api.RouteTable) { got <- t }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WatchRoutes: got %v, want nil after cancel", err)
		}
	}()
	next := func() api.RouteTable {
		t.Helper()
		select {
		case tbl := <-got:
			return tbl
		case <-time.After(5 * time.Second):
			t.Fatal("no route table within 5s")
			return api.RouteTable{}
		}
	}

	alice := api.Route{ID: "a", Target: "100.96.0.2:8080", RouteAs: "alice", Holder: "alice@laptop"}
	bob := api.Route{ID: "b", Target: "100.96.0.3:8080", RouteAs: "bob", Holder: "bob@laptop"}
	gw.set(alice)
	if tbl := next(); tbl.Version != 1 || len(tbl.Routes) != 1 || tbl.Routes[0] != alice {
		t.Fatalf("first table: got %+v, want version 1 with alice's route", tbl)
	}
	gw.set(alice, bob)
	if tbl := next(); tbl.Version != 2 || len(tbl.Routes) != 2 {
		t.Fatalf("second table: got %+v, want version 2 with two routes", tbl)
	}

	// The gateway goes away: the routes are dropped at once.
	gw.close()
	if tbl := next(); len(tbl.Routes) != 0 {
		t.Fatalf("gateway gone: got %+v, want an empty table", tbl)
	}
}

func TestGatewayClientWrongToken(t *testing.T) {
	gw := newFakeGateway(t)
	target := rawServer(t, "workstation")
	gw.set(api.Route{ID: "a", Target: target, Holder: "alice@laptop"})
	var logs syncBuffer
	gc := NewGatewayClient(GatewayClientConfig{Addr: gw.addr(), Token: staticToken("wrong"), Log: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	if _, err := gc.Poll(ctx, "shop", "web", 0); err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "token") {
		t.Errorf("Poll: got error %v, want one naming the refused token (401)", err)
	}
	if _, err := gc.Dial(ctx, target); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("Dial: got error %v, want one naming 401", err)
	}

	// WatchRoutes keeps trying (the sidecar must stay up) and says why in its log.
	wctx, wcancel := context.WithCancel(ctx)
	calls := 0
	done := make(chan error, 1)
	go func() { done <- gc.WatchRoutes(wctx, "shop", "web", func(api.RouteTable) { calls++ }) }()
	testkit.WaitFor(t, 5*time.Second, "the refused token in the log", func() bool { return strings.Contains(logs.String(), "refused the pod's relay token") })
	wcancel()
	if err := <-done; err != nil {
		t.Errorf("WatchRoutes: got %v, want nil after cancel", err)
	}
	if calls != 0 {
		t.Errorf("onChange: got %d calls, want 0", calls)
	}
}

// TestGatewayClientTokenFile: the client reads the pod's projected token
// file for every request, so when the kubelet rotates it the next poll and
// the next relay carry the new token; a missing file fails before any
// request, naming the volume to repair.
func TestGatewayClientTokenFile(t *testing.T) {
	gw := newFakeGateway(t)
	target := rawServer(t, "workstation")
	gw.set(api.Route{ID: "a", Target: target, Holder: "alice@laptop"})
	path := filepath.Join(t.TempDir(), "token")
	write := func(tok string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	gc := NewGatewayClient(GatewayClientConfig{Addr: gw.addr(), Token: TokenFile(path), Log: testLogger(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dial := func() error {
		c, err := gc.Dial(ctx, target)
		if err == nil {
			c.Close()
		}
		return err
	}

	if _, err := gc.Poll(ctx, "shop", "web", 0); err == nil || !strings.Contains(err.Error(), "projected ServiceAccount token") {
		t.Errorf("Poll without the token file: got %v, want an error naming the projected token volume", err)
	}
	if err := dial(); err == nil || !strings.Contains(err.Error(), "projected ServiceAccount token") {
		t.Errorf("Dial without the token file: got %v, want an error naming the projected token volume", err)
	}
	if n := gw.connects(); n != 0 {
		t.Errorf("gateway got %d CONNECTs without a token, want 0", n)
	}

	write(testToken)
	if _, err := gc.Poll(ctx, "shop", "web", 0); err != nil {
		t.Fatalf("Poll: %v", err)
	}
	gw.rotate("rotated-token") // the old token is no longer accepted
	if _, err := gc.Poll(ctx, "shop", "web", 0); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("Poll with the old token: got %v, want 401", err)
	}
	write("rotated-token") // the kubelet writes the new one
	if _, err := gc.Poll(ctx, "shop", "web", 0); err != nil {
		t.Errorf("Poll after the rotation: %v", err)
	}
	if err := dial(); err != nil {
		t.Errorf("Dial after the rotation: %v", err)
	}
}

// TestDial runs Dial against hand-written gateways, to control the bytes.
func TestDial(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answer  string // written in one piece after the CONNECT; "" = never answer
		wantErr string // "" = success
		wantMsg string // first bytes read from the relayed connection
	}{
		{name: "workstation speaks first", answer: "HTTP/1.1 200 OK\r\n\r\nhello from the workstation\n", wantMsg: "hello from the workstation\n"},
		{name: "not a live route", answer: "HTTP/1.1 403 Forbidden\r\nContent-Length: 26\r\n\r\nnot a live route's target\n", wantErr: "403 Forbidden: not a live route's target"},
		{name: "workstation down", answer: "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 19\r\n\r\nconnection refused\n", wantErr: "502 Bad Gateway: connection refused"},
		{name: "gateway silent", wantErr: "deadline exceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t)
			var wg sync.WaitGroup
			t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
			reqs := make(chan *http.Request, 1)
			wg.Go(func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				reqs <- req
				if tc.answer == "" {
					_, _ = io.Copy(io.Discard, c) // until the client gives up
					return
				}
				_, _ = io.WriteString(c, tc.answer)
				_, _ = io.Copy(io.Discard, c)
			})
			gc := NewGatewayClient(GatewayClientConfig{Addr: ln.Addr().String(), Token: staticToken(testToken)})
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			conn, err := gc.Dial(ctx, "100.96.0.2:8080")
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("Dial took %v, want it bounded by its context (300ms)", took)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			req := <-reqs
			if req.Method != http.MethodConnect || req.Host != "100.96.0.2:8080" || req.Header.Get("Authorization") != "Bearer "+testToken {
				t.Errorf("gateway got %s %s with Authorization %q, want CONNECT 100.96.0.2:8080 with the bearer token", req.Method, req.Host, req.Header.Get("Authorization"))
			}
			// Past the handshake the context no longer matters.
			cancel()
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil || got != tc.wantMsg {
				t.Fatalf("got %q (err %v), want %q", got, err, tc.wantMsg)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var _ net.Conn = (*splice.BufferedConn)(nil)
