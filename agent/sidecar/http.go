package sidecar

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
)

// HTTP mode: connections of a Service with isolated routes are served by a
// net/http server (HTTP/1.x and h2c prior knowledge) whose handler proxies
// each request on its route-as header. The upstream speaks the protocol the
// client spoke.

// serveHTTPConn hands a sniffed HTTP connection (head = the bytes sniffed)
// to the HTTP server and waits until the server, or an upgraded stream, is
// done with it.
func (s *Sidecar) serveHTTPConn(ctx context.Context, c net.Conn, head []byte) {
	hc := &httpConn{Conn: c, head: head, done: make(chan struct{})}
	if !s.httpLn.push(hc) {
		_ = hc.Close()
		return
	}
	select {
	case <-hc.done:
	case <-ctx.Done():
		_ = hc.Close()
	}
}

// serveHTTP routes one request on a snapshot of the routes: a full route
// (the table changed under a keep-alive connection) or the isolated route
// of its route-as header go to a workstation, the rest to the original.
func (s *Sidecar) serveHTTP(w http.ResponseWriter, r *http.Request) {
	// Stream the request body while the response flows back, as the
	// original would: by default an HTTP/1 handler's response discards the
	// unread body. (HTTP/2 is full duplex already.)
	_ = http.NewResponseController(w).EnableFullDuplex()
	table := s.cfg.Routes.Current()
	v := r.Header.Get(api.RouteAsHeader)
	s.trace.observe(r.Context(), table.TraceEpoch, v) // before passing it on: trace.go
	label := routeAsLabel(table, v)
	route, ok := table.Full()
	if !ok {
		route, ok = table.ForRouteAs(v)
	}
	if !ok {
		s.m.requests.WithLabelValues(routeCluster, label).Inc()
		s.cluster.ServeHTTP(w, r)
		return
	}
	s.toWorkstation(w, r, route, label)
}

// toWorkstation proxies r to route's workstation. If the relay dial fails
// before a byte of the body was sent, the same request goes to the original.
func (s *Sidecar) toWorkstation(w http.ResponseWriter, r *http.Request, route api.Route, label string) {
	var body *keptBody
	if r.Body != nil && r.Body != http.NoBody {
		orig := r.Body
		defer orig.Close() // the transport only closes the wrapper
		body = &keptBody{rc: orig}
		r.Body = body
	}
	counted := false // ModifyResponse and ErrorHandler run on this goroutine
	count := func(who string) {
		if !counted {
			counted = true
			s.m.requests.WithLabelValues(who, label).Inc()
		}
	}
	p := &httputil.ReverseProxy{
		Rewrite:       rewriteTo(route.Target),
		Transport:     s.relay,
		FlushInterval: -1,
		ErrorLog:      s.errLog,
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Set(api.ServedByHeader, routeLocal)
			count(routeLocal)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, out *http.Request, err error) {
			if _, ok := errors.AsType[*relayDialError](err); ok && !counted && body.untouched() {
				if !errors.Is(err, errCoolingOff) {
					s.log.Warn("workstation unreachable; passing the request to the original",
						"target", route.Target, "holder", route.Holder, "route_as", route.RouteAs, "err", err)
				}
				s.m.passthrough.WithLabelValues(reasonDialFailed).Inc()
				count(routeCluster)
				if body != nil {
					r.Body = body.again()
				}
				s.cluster.ServeHTTP(w, r)
				return
			}
			count(routeLocal)
			s.proxyError(w, out, routeLocal, err)
		},
	}
	p.ServeHTTP(w, r)
}

// clusterProxy builds the reverse proxy to the original container.
func (s *Sidecar) clusterProxy(t http.RoundTripper) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:       rewriteTo(s.cfg.Original),
		Transport:     t,
		FlushInterval: -1,
		ErrorLog:      s.errLog,
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Set(api.ServedByHeader, routeCluster)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, out *http.Request, err error) {
			s.proxyError(w, out, routeCluster, err)
		},
	}
}

// proxyError answers 502 for an upstream that failed after it was chosen.
func (s *Sidecar) proxyError(w http.ResponseWriter, r *http.Request, servedBy string, err error) {
	lvl := slog.LevelWarn
	if errors.Is(err, context.Canceled) {
		lvl = slog.LevelDebug // the client went away
	}
	s.log.Log(r.Context(), lvl, "proxying failed", "served_by", servedBy, "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set(api.ServedByHeader, servedBy)
	w.WriteHeader(http.StatusBadGateway)
}

// forwardingHeaders are passed on unchanged: the sidecar is transparent, so
// it neither drops the client's (as Rewrite does) nor adds its own.
var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

func rewriteTo(host string) func(*httputil.ProxyRequest) {
	return func(pr *httputil.ProxyRequest) {
		pr.Out.URL.Scheme = "http"
		pr.Out.URL.Host = host
		pr.Out.URL.RawQuery = pr.In.URL.RawQuery
		for _, h := range forwardingHeaders {
			if v, ok := pr.In.Header[h]; ok {
				pr.Out.Header[h] = v
			}
		}
	}
}

// routeAsLabel bounds the route_as label: a live route's value, "" when
// the header is absent, "other" otherwise.
func routeAsLabel(t api.RouteTable, v string) string {
	if v == "" {
		return ""
	}
	if _, ok := t.ForRouteAs(v); ok {
		return v
	}
	return "other"
}

// protoTransport sends a request upstream in the protocol it came in:
// HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
type protoTransport struct{ h1, h2 *http.Transport }

func newProtoTransport(dial func(ctx context.Context, addr string) (net.Conn, error)) protoTransport {
	build := func(set func(*http.Protocols)) *http.Transport {
		t := &http.Transport{
			DialContext:         func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
			Protocols:           new(http.Protocols),
			DisableCompression:  true, // pass Accept-Encoding and bodies through untouched
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		}
		set(t.Protocols)
		return t
	}
	return protoTransport{
		h1: build(func(p *http.Protocols) { p.SetHTTP1(true) }),
		h2: build(func(p *http.Protocols) { p.SetUnencryptedHTTP2(true) }),
	}
}

// RoundTrip implements http.RoundTripper.
func (t protoTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.ProtoMajor == 2 {
		return t.h2.RoundTrip(r)
	}
	return t.h1.RoundTrip(r)
}

func (t protoTransport) closeIdle() {
	t.h1.CloseIdleConnections()
	t.h2.CloseIdleConnections()
}

// keptBody lets a request body survive a failed round trip: the transport
// closes the wrapper, not the body, and the bytes read are counted so a
// retry elsewhere is only made on an untouched body.
type keptBody struct {
	rc     io.ReadCloser
	n      atomic.Int64
	closed atomic.Bool
}

var errBodyClosed = errors.New("http: read on closed request body")

func (b *keptBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errBodyClosed
	}
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *keptBody) Close() error {
	b.closed.Store(true)
	return nil
}

// untouched reports that no byte was read; nil is untouched.
func (b *keptBody) untouched() bool { return b == nil || b.n.Load() == 0 }

// again wraps the same body afresh.
func (b *keptBody) again() *keptBody { return &keptBody{rc: b.rc} }

// httpConn is a connection handed to the HTTP server: reads replay the
// sniffed bytes first, and done closes when the server is finished with it.
type httpConn struct {
	net.Conn
	head []byte
	once sync.Once
	done chan struct{}
}

func (c *httpConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *httpConn) Close() error {
	err := net.ErrClosed
	c.once.Do(func() {
		err = c.Conn.Close()
		close(c.done)
	})
	return err
}

// chanListener is the HTTP server's listener: connections are pushed in.
type chanListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

// push hands c to Accept; false if the listener is closed.
func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
