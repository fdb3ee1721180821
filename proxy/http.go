package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strings"
	"time"
)

// newHTTPServer returns the http.Server for one HTTP proxy listener. Its
// requests carry s.ctx, so Close cancels upstream round trips.
func (s *Server) newHTTPServer() *http.Server {
	rp := &httputil.ReverseProxy{
		// The request URI is absolute (GET http://host/path), so the
		// outbound URL is already right; ReverseProxy strips hop-by-hop
		// headers, including Proxy-Authorization, in both directions.
		Rewrite:   func(*httputil.ProxyRequest) {},
		Transport: s.transport,
		ModifyResponse: func(*http.Response) error {
			s.metrics.count("http", resultOK)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			status := httpStatus(err)
			s.metrics.count("http", resultOf(err))
			s.log.Debug("http forward failed", "url", r.URL.String(), "status", status, "err", err)
			http.Error(w, err.Error(), status)
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.serveHTTP(w, r, rp)
		}),
		ReadHeaderTimeout: handshakeTimeout,
		IdleTimeout:       httpIdleTimeout,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// httpIdleTimeout closes a client's keep-alive connection to the HTTP proxy
// after this long without a request; a variable so tests can shorten it.
var httpIdleTimeout = 2 * time.Minute

// newTransport returns the Transport that forwards plain HTTP requests,
// resolving and dialling through Config.
func (s *Server) newTransport() *http.Transport {
	return &http.Transport{
		Proxy: nil, // never chain to $HTTP_PROXY
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := splitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return s.dialTCP(ctx, host, port)
		},
		DisableCompression:  true, // pass Accept-Encoding and bodies through untouched
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
}

// serveHTTP authenticates a proxy request, then tunnels (CONNECT) or
// forwards (absolute URI) it.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request, rp *httputil.ReverseProxy) {
	if !s.enter() {
		http.Error(w, "proxy closing", http.StatusServiceUnavailable)
		return
	}
	defer s.wg.Done()
	proto := "http"
	if r.Method == http.MethodConnect {
		proto = "http_connect"
	}
	if s.authRequired() && !s.basicAuthOK(r.Header.Get("Proxy-Authorization")) {
		s.metrics.count(proto, resultAuthFailed)
		w.Header().Set("Proxy-Authenticate", `Basic realm="bridgetun"`)
		http.Error(w, "proxy authentication required", http.StatusProxyAuthRequired)
		return
	}
	if r.Method == http.MethodConnect {
		s.httpConnect(w, r)
		return
	}
	if !r.URL.IsAbs() || r.URL.Scheme != "http" || r.URL.Host == "" {
		s.metrics.count(proto, resultBadRequest)
		http.Error(w, "this is a proxy: send an absolute http:// URI or CONNECT host:port", http.StatusBadRequest)
		return
	}
	rp.ServeHTTP(w, r)
}

// basicAuthOK checks a Proxy-Authorization: Basic header value.
func (s *Server) basicAuthOK(h string) bool {
	scheme, enc, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return false
	}
	dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return false
	}
	user, pass, ok := strings.Cut(string(dec), ":")
	return ok && s.credentialsOK(user, pass)
}

// httpConnect dials r.Host, answers 200 and relays over the hijacked
// connection.
func (s *Server) httpConnect(w http.ResponseWriter, r *http.Request) {
	host, port, err := splitHostPort(r.Host)
	if err != nil {
		s.metrics.count("http_connect", resultBadRequest)
		http.Error(w, "CONNECT needs host:port: "+err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), dialTimeout)
	up, err := s.dialTCP(ctx, host, port)
	cancel()
	if err != nil {
		status := httpStatus(err)
		s.metrics.count("http_connect", resultOf(err))
		s.log.Debug("http connect failed", "dest", r.Host, "status", status, "err", err)
		http.Error(w, err.Error(), status)
		return
	}
	stopUp := s.closeOnDone(up)
	defer stopUp()
	defer up.Close()

	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.log.Error("http connect: hijack", "err", err)
		http.Error(w, "cannot hijack connection", http.StatusInternalServerError)
		return
	}
	stopC := s.closeOnDone(c)
	defer stopC()
	defer c.Close()
	c.SetDeadline(time.Time{})
	s.metrics.count("http_connect", resultOK) // before the reply, as in SOCKS
	if _, err := c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		return
	}
	// Bytes the client sent after the request head are already buffered.
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		if _, err := up.Write(b); err != nil {
			return
		}
	}
	s.relay(c, up)
}

// httpStatus maps a dial or round-trip error to a proxy response status.
func httpStatus(err error) int {
	switch {
	case errors.Is(err, errDenied):
		return http.StatusForbidden
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}
