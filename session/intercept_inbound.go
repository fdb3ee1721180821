package session

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/netlimit"
	"github.com/bridgetun/bridgetun/internal/splice"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// checkLocalPort refuses an intercept whose local server is not listening.
func checkLocalPort(port int) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 2*time.Second)
	if err != nil {
		return fmt.Errorf("intercept: nothing listens on 127.0.0.1:%d: start your local server first (or pass the port it listens on with --port)", port)
	}
	c.Close()
	return nil
}

// listenInbound accepts the gateway's connections on the tunnel address and
// hands each to 127.0.0.1:port. In TUN mode a local server bound to every
// address already receives them directly: then there is nothing to do.
func (ic *interceptor) listenInbound(st *interceptState, port int) error {
	ln, err := ic.cfg.Listen(port)
	if err != nil {
		return fmt.Errorf("intercept: listen on the tunnel address, port %d: %w", port, err)
	}
	ic.allowInbound(st, port)
	if ln == nil {
		ic.cfg.Log.Info("local server listens on every address: it takes intercepted connections itself", "port", port)
		return nil
	}
	local := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var (
		wg         sync.WaitGroup
		mu         sync.Mutex
		active     = map[net.Conn]bool{}
		lastAccept time.Time
	)
	track := func(c net.Conn, on bool) {
		mu.Lock()
		defer mu.Unlock()
		if on {
			active[c] = true
			lastAccept = time.Now()
		} else {
			delete(active, c)
		}
	}
	capped := netlimit.Listener(ln, netlimit.MaxInbound, nil)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := capped.Accept()
			if err != nil {
				return
			}
			track(c, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer track(c, false)
				defer c.Close()
				up, err := net.DialTimeout("tcp", local, 2*time.Second)
				if err != nil {
					ic.cfg.Log.Warn("intercepted connection: local server does not answer", "local", local, "err", err)
					return
				}
				defer up.Close()
				ic.cfg.Connections.Inc()
				// Leaving closes the connections still open; no ctx of its own.
				_, _ = splice.Relay(context.Background(), c, up)
			}()
		}
	}()
	st.quiesce = func(max time.Duration) {
		// Relays the gateway admitted just before the unregister may still
		// be on their way here: done means no connection open and none
		// accepted for leaveSettle, and at least leaveSettle since the
		// start. Cutting one of them would fail its request.
		start := time.Now()
		for now := start; now.Sub(start) < max; now = time.Now() {
			mu.Lock()
			n, last := len(active), lastAccept
			mu.Unlock()
			if n == 0 && now.Sub(start) >= leaveSettle && now.Sub(last) >= leaveSettle {
				return
			}
			time.Sleep(20 * time.Millisecond) // polling the relay count, bounded by max
		}
	}
	// Leaving cuts the connections still open (a sidecar's idle keep-alive
	// connection would otherwise hold the leave for minutes).
	st.closers = append(st.closers, func() error {
		err := ln.Close()
		mu.Lock()
		for c := range active {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
		return err
	})
	return nil
}

// inboundPorts is the tunnel's inbound filter (client.Client): from the
// tunnel, only the ports it opened take new connections.
type inboundPorts interface {
	// AllowInbound opens port; calls are counted.
	AllowInbound(port uint16)
	// RevokeInbound undoes one AllowInbound.
	RevokeInbound(port uint16)
}

// allowInbound opens the inbound filter for the port the gateway dials (the
// local port) until st closes.
func (ic *interceptor) allowInbound(st *interceptState, port int) {
	in := ic.cfg.Inbound
	if in == nil {
		return
	}
	in.AllowInbound(uint16(port))
	st.closers = append(st.closers, func() error { in.RevokeInbound(uint16(port)); return nil })
}

// Limits of the local URL's server; tests shorten them.
var (
	localURLHeaderTimeout = 10 * time.Second // a request's header must arrive within this
	localURLIdleTimeout   = 2 * time.Minute  // a keep-alive connection without a request is closed after this
)

// localURLServer is the local URL's HTTP server around h.
func localURLServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: localURLHeaderTimeout, IdleTimeout: localURLIdleTimeout}
}

// serveLocalURL opens a loopback listener that adds the route-as header and
// forwards to the Service through the tunnel, so a browser on this machine
// reaches the isolated version.
func (ic *interceptor) serveLocalURL(ctx context.Context, st *interceptState, spec InterceptSpec, t cluster.InterceptTarget) (string, error) {
	svc, err := ic.cfg.Client.CoreV1().Services(t.Namespace).Get(ctx, t.Service, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("intercept: service %s/%s: %w", t.Namespace, t.Service, err)
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return "", nil // headless: no single address to send the browser to
	}
	addr := spec.URLAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("intercept: local URL listener %s: %w", addr, err)
	}
	upstream := &url.URL{Scheme: "http", Host: net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(t.ServicePort.Port)))}
	dial := ic.cfg.Dial
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			r.Out.Host = t.Service + "." + t.Namespace
			r.Out.Header.Set(api.RouteAsHeader, spec.RouteAs)
		},
		Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 16, IdleConnTimeout: 30 * time.Second},
	}
	srv := localURLServer(rp)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(netlimit.Listener(ln, netlimit.MaxLocalURL, nil))
	}()
	st.closers = append(st.closers, func() error {
		err := srv.Close()
		<-served
		return err
	})
	return "http://" + ln.Addr().String() + "/", nil
}
