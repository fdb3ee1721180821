package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/gorilla/websocket"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/httpstream/spdy"
	pfconst "k8s.io/apimachinery/pkg/util/portforward"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
)

// fakeKubelet serves the pods/portforward subresource the way the API
// server and kubelet do: SPDY over WebSocket (when websocket is set) or
// plain SPDY, one error+data stream pair per request ID, each data stream
// connected to targets[port].
//
//	PortForwardDialer ──ws|spdy──► fakeKubelet ──tcp──► targets[port] (echo)
type fakeKubelet struct {
	websocket bool
	targets   map[int]string

	path      atomic.Value // last request path
	wsConns   atomic.Int32
	spdyConns atomic.Int32
	wg        sync.WaitGroup
}

func (k *fakeKubelet) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k.path.Store(r.URL.Path)
	streams := make(chan httpstream.Stream, 8)
	handler := func(s httpstream.Stream, _ <-chan struct{}) error { streams <- s; return nil }
	var conn httpstream.Connection
	if websocket.IsWebSocketUpgrade(r) {
		if !k.websocket {
			http.Error(w, "websocket upgrade not supported", http.StatusBadRequest)
			return
		}
		up := websocket.Upgrader{Subprotocols: []string{pfconst.WebsocketsSPDYTunnelingPrefix + pfconst.PortForwardV1Name}}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		c, err := spdy.NewServerConnection(portforward.NewTunnelingConnection("server", ws), handler)
		if err != nil {
			ws.Close()
			return
		}
		k.wsConns.Add(1)
		conn = c
	} else {
		if _, err := httpstream.Handshake(r, w, []string{pfconst.PortForwardV1Name}); err != nil {
			return
		}
		conn = spdy.NewResponseUpgrader().UpgradeResponse(w, r, handler)
		if conn == nil {
			return
		}
		k.spdyConns.Add(1)
	}
	defer conn.Close()
	type pair struct{ errS, data httpstream.Stream }
	pending := map[string]*pair{}
	for {
		select {
		case <-conn.CloseChan():
			return
		case s := <-streams:
			id := s.Headers().Get(corev1.PortForwardRequestIDHeader)
			p := pending[id]
			if p == nil {
				p = &pair{}
				pending[id] = p
			}
			if s.Headers().Get(corev1.StreamType) == corev1.StreamTypeError {
				p.errS = s
			} else {
				p.data = s
			}
			if p.errS != nil && p.data != nil {
				delete(pending, id)
				port, _ := strconv.Atoi(s.Headers().Get(corev1.PortHeader))
				k.wg.Add(1)
				go k.forward(p.errS, p.data, port)
			}
		}
	}
}

func (k *fakeKubelet) forward(errS, data httpstream.Stream, port int) {
	defer k.wg.Done()
	defer errS.Close()
	defer data.Close()
	target, err := net.Dial("tcp", k.targets[port])
	if k.targets[port] == "" || err != nil {
		fmt.Fprintf(errS, "error forwarding port %d to pod abc: failed to connect to localhost:%d inside namespace: connection refused", port, port)
		return
	}
	defer target.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(target, data)
		target.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(data, target)
	<-done
}

func TestPortForwardDialer(t *testing.T) {
	for _, ws := range []bool{true, false} {
		t.Run(fmt.Sprintf("websocket=%v", ws), func(t *testing.T) {
			k := &fakeKubelet{websocket: ws, targets: map[int]string{ControlPort: testkit.EchoServer(t)}}
			srv := httptest.NewServer(k)
			defer srv.Close()
			cfg := &rest.Config{Host: srv.URL}
			dial := PortForwardDialer(cfg, nil, "bt", "gw-0", ControlPort)

			baseline := runtime.NumGoroutine()
			const dials = 10
			for i := range dials {
				c, err := dial(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				msg := bytes.Repeat([]byte(fmt.Sprintf("hello %d ", i)), 10000)
				go c.Write(msg)
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("echo: %v (got %d bytes equal=%v)", err, len(got), bytes.Equal(got, msg))
				}
				if i == 0 {
					// Half-close: the echo server sees EOF and closes; we see EOF.
					if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
						t.Fatalf("CloseWrite: %v", err)
					}
					if n, err := c.Read(got); n != 0 || err != io.EOF {
						t.Fatalf("read after CloseWrite = %d, %v; want EOF", n, err)
					}
				}
				c.SetDeadline(time.Now()) // accepted, ignored; must not panic
				_ = c.LocalAddr().String() + c.RemoteAddr().String()
				if err := c.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
				c.Close() // idempotent
			}
			if want := "/api/v1/namespaces/bt/pods/gw-0/portforward"; k.path.Load() != want {
				t.Errorf("request path %q, want %q", k.path.Load(), want)
			}
			if ws && k.wsConns.Load() != dials || !ws && k.spdyConns.Load() != dials {
				t.Errorf("websocket conns %d, spdy conns %d; want %d of the %v kind", k.wsConns.Load(), k.spdyConns.Load(), dials, ws)
			}
			k.wg.Wait()
			testkit.WaitGoroutines(t, 5*time.Second, baseline+3) // a leak per dial would exceed this
		})
	}
}

func TestPortForwardDialerRemoteError(t *testing.T) {
	k := &fakeKubelet{websocket: true, targets: map[int]string{}}
	srv := httptest.NewServer(k)
	defer srv.Close()
	c, err := PortForwardDialer(&rest.Config{Host: srv.URL}, nil, "bt", "gw-0", StreamPort)(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Read(make([]byte, 10))
	want := "port-forward to pod bt/gw-0 port 8082: error forwarding port 8082 to pod abc: failed to connect to localhost:8082 inside namespace: connection refused"
	if err == nil || err.Error() != want {
		t.Errorf("Read error = %v, want %q", err, want)
	}
}

func TestPortForwardDialerUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = PortForwardDialer(&rest.Config{Host: "http://" + addr}, nil, "bt", "gw-0", ControlPort)(t.Context())
	if err == nil || !strings.Contains(err.Error(), "port-forward to pod bt/gw-0 port 8081") {
		t.Errorf("got %v, want an error naming the pod and port", err)
	}
}

func TestPortForwardDialerContext(t *testing.T) {
	// A server that accepts TCP but never answers the upgrade.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	baseline := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = PortForwardDialer(&rest.Config{Host: "http://" + ln.Addr().String()}, nil, "bt", "gw-0", ControlPort)(ctx)
	if err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("got %v after %v, want a context error promptly", err, time.Since(start))
	}
	// The abandoned handshake must not linger.
	testkit.WaitGoroutines(t, 5*time.Second, baseline)
	ln.Close()
	for c := range accepted {
		c.Close()
	}
}
