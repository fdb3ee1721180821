package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	spdystream "k8s.io/apimachinery/pkg/util/httpstream/spdy"
	pfconst "k8s.io/apimachinery/pkg/util/portforward"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/transport/websocket"
)

// PortForwardDialer returns a dial function; each call opens a fresh
// port-forward connection to ns/pod:port, the way kubectl v1.34 does
// (SPDY tunnelled over WebSocket, falling back to plain SPDY when the
// upgrade is refused), and returns its data stream as a net.Conn. Closing
// the net.Conn closes the streams and the connection. An error the kubelet
// reports on the error stream (e.g. nothing listening on port) surfaces as
// the Read error. ctx bounds the dial only, not the connection. client is
// unused today (the URL comes from cfg) and may be nil.
func PortForwardDialer(cfg *rest.Config, client kubernetes.Interface, ns, pod string, port int) func(ctx context.Context) (net.Conn, error) {
	_ = client
	var reqID atomic.Int64
	return func(ctx context.Context) (net.Conn, error) {
		what := fmt.Sprintf("port-forward to pod %s/%s port %d", ns, pod, port)
		u, err := portForwardURL(cfg, ns, pod)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		conn, err := dialContext(ctx, portForwardHTTPDialer(ctx, cfg, u))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		c, err := openStreams(conn, port, int(reqID.Add(1)), what)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return c, nil
	}
}

// portForwardURL is the pod's portforward subresource URL.
func portForwardURL(cfg *rest.Config, ns, pod string) (*url.URL, error) {
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("API server URL: %w", err)
	}
	u := *base
	u.Path = path.Join("/", base.Path, "api/v1/namespaces", ns, "pods", pod, "portforward")
	return &u, nil
}

// portForwardHTTPDialer builds kubectl's dialer: SPDY tunnelled over
// WebSocket first, plain SPDY when the server refuses the upgrade. It is
// built per dial, bound to ctx: client-go's own dialers take no context, so
// these two are the same few calls (websocket.Negotiate, spdy.Negotiate)
// with requests made with ctx, which bounds connecting and the handshakes.
func portForwardHTTPDialer(ctx context.Context, cfg *rest.Config, u *url.URL) httpstream.Dialer {
	return portforward.NewFallbackDialer(
		&wsDialer{ctx: ctx, cfg: cfg, url: u},
		&spdyDialer{ctx: ctx, cfg: cfg, url: u},
		func(err error) bool { return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err) },
	)
}

// wsDialer is portforward.NewSPDYOverWebsocketDialer with a context.
type wsDialer struct {
	ctx context.Context
	cfg *rest.Config
	url *url.URL
}

func (d *wsDialer) Dial(protocols ...string) (httpstream.Connection, string, error) {
	rt, holder, err := websocket.RoundTripperFor(d.cfg)
	if err != nil {
		return nil, "", fmt.Errorf("WebSocket transport: %w", err)
	}
	req, err := http.NewRequestWithContext(d.ctx, http.MethodGet, d.url.String(), nil)
	if err != nil {
		return nil, "", err
	}
	tunneling := make([]string, len(protocols))
	for i, p := range protocols {
		tunneling[i] = pfconst.WebsocketsSPDYTunnelingPrefix + p
	}
	ws, err := websocket.Negotiate(rt, holder, req, tunneling...)
	if err != nil {
		return nil, "", err
	}
	if ws == nil {
		return nil, "", errors.New("negotiated WebSocket connection is nil")
	}
	protocol := strings.TrimPrefix(ws.Subprotocol(), pfconst.WebsocketsSPDYTunnelingPrefix)
	conn, err := spdystream.NewClientConnectionWithPings(portforward.NewTunnelingConnection("client", ws), portforward.PingPeriod)
	if err != nil {
		ws.Close()
		return nil, "", err
	}
	return conn, protocol, nil
}

// spdyDialer is spdy.NewDialer with a context.
type spdyDialer struct {
	ctx context.Context
	cfg *rest.Config
	url *url.URL
}

func (d *spdyDialer) Dial(protocols ...string) (httpstream.Connection, string, error) {
	transport, upgrader, err := spdy.RoundTripperFor(d.cfg)
	if err != nil {
		return nil, "", fmt.Errorf("SPDY transport: %w", err)
	}
	req, err := http.NewRequestWithContext(d.ctx, http.MethodPost, d.url.String(), nil)
	if err != nil {
		return nil, "", err
	}
	return spdy.Negotiate(upgrader, &http.Client{Transport: transport}, req, protocols...)
}

// dialContext runs Dial, giving up when ctx ends even if a handshake step
// ignores ctx; a connection that arrives after that is closed.
func dialContext(ctx context.Context, d httpstream.Dialer) (httpstream.Connection, error) {
	type result struct {
		conn httpstream.Connection
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		c, _, err := d.Dial(portforward.PortForwardProtocolV1Name)
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		return r.conn, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.conn != nil {
				r.conn.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// openStreams creates the error and data stream pair for port, as
// client-go's PortForwarder does for each local connection.
func openStreams(conn httpstream.Connection, port, requestID int, what string) (*pfConn, error) {
	headers := http.Header{}
	headers.Set(corev1.StreamType, corev1.StreamTypeError)
	headers.Set(corev1.PortHeader, strconv.Itoa(port))
	headers.Set(corev1.PortForwardRequestIDHeader, strconv.Itoa(requestID))
	errStream, err := conn.CreateStream(headers)
	if err != nil {
		return nil, fmt.Errorf("create error stream: %w", err)
	}
	errStream.Close() // we never write to it

	c := &pfConn{conn: conn, what: what, errDone: make(chan struct{})}
	go func() {
		defer close(c.errDone)
		msg, err := io.ReadAll(errStream)
		switch {
		case len(msg) > 0:
			c.remoteErr = fmt.Errorf("%s: %s", what, oneLineS(string(msg)))
		case err != nil && !c.closed.Load():
			c.remoteErr = fmt.Errorf("%s: read error stream: %w", what, err)
		}
	}()

	headers.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := conn.CreateStream(headers)
	if err != nil {
		conn.Close()
		<-c.errDone
		return nil, fmt.Errorf("create data stream: %w", err)
	}
	c.data = data
	return c, nil
}

// pfConn is a port-forward data stream as a net.Conn.
type pfConn struct {
	conn httpstream.Connection
	data httpstream.Stream
	what string

	errDone   chan struct{} // closed when the error stream is drained
	remoteErr error         // what the error stream said; read after errDone

	closed    atomic.Bool
	closeOnce sync.Once
}

var _ net.Conn = (*pfConn)(nil)

// errWait bounds how long a Read that hit EOF waits for the error stream
// to tell why.
const errWait = 2 * time.Second

// Read reads from the data stream. At EOF or on an error it returns the
// error the remote reported on the error stream, if any.
func (c *pfConn) Read(p []byte) (int, error) {
	n, err := c.data.Read(p)
	if err != nil && !c.closed.Load() {
		if rerr := c.waitRemoteErr(errWait); rerr != nil {
			return n, rerr
		}
	}
	return n, err
}

// Write writes to the data stream; a failure reports the remote's error if
// it has already said one.
func (c *pfConn) Write(p []byte) (int, error) {
	n, err := c.data.Write(p)
	if err != nil && !c.closed.Load() {
		if rerr := c.waitRemoteErr(0); rerr != nil {
			return n, rerr
		}
	}
	return n, err
}

func (c *pfConn) waitRemoteErr(d time.Duration) error {
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-c.errDone:
		case <-t.C:
		case <-c.conn.CloseChan():
		}
	}
	select {
	case <-c.errDone:
		return c.remoteErr
	default:
		return nil
	}
}

// CloseWrite half-closes the data stream: the pod sees EOF.
func (c *pfConn) CloseWrite() error { return c.data.Close() }

// Close resets the data stream and closes the connection, and returns once
// the error-stream reader has exited.
func (c *pfConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		_ = c.data.Reset()
		err = c.conn.Close()
		<-c.errDone
	})
	return err
}

func (c *pfConn) LocalAddr() net.Addr  { return pfAddr("local") }
func (c *pfConn) RemoteAddr() net.Addr { return pfAddr(c.what) }

// Deadlines are not supported by port-forward streams; they are accepted
// and ignored.
func (c *pfConn) SetDeadline(time.Time) error      { return nil }
func (c *pfConn) SetReadDeadline(time.Time) error  { return nil }
func (c *pfConn) SetWriteDeadline(time.Time) error { return nil }

type pfAddr string

func (a pfAddr) Network() string { return "portforward" }
func (a pfAddr) String() string  { return string(a) }
