package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Status is what `bridgetun status` shows.
type Status struct {
	State            string          `json:"state"` // connecting, connected, reconnecting
	PID              int             `json:"pid"`
	Context          string          `json:"context"`
	Namespace        string          `json:"namespace"`
	GatewayNamespace string          `json:"gateway_namespace"`
	GatewayPod       string          `json:"gateway_pod"`
	GatewayVersion   string          `json:"gateway_version"`
	ClientVersion    string          `json:"client_version"`
	Mode             string          `json:"mode"`
	Transport        string          `json:"transport"`
	TUN              string          `json:"tun,omitempty"`
	TunnelAddress    string          `json:"tunnel_address"`
	GatewayAddress   string          `json:"gateway_address"`
	Routes           []string        `json:"routes"`
	ClusterDNS       string          `json:"cluster_dns"`
	ClusterDomain    string          `json:"cluster_domain"`
	LastHandshake    time.Time       `json:"last_handshake"`
	HandshakeAgeSec  float64         `json:"handshake_age_seconds"`
	RxBytes          uint64          `json:"rx_bytes"`
	TxBytes          uint64          `json:"tx_bytes"`
	Reconnects       int64           `json:"reconnects"`
	Since            time.Time       `json:"since"`
	DNSMode          string          `json:"dns_mode"` // resolved, resolv.conf, none, off
	DNSListen        string          `json:"dns_listen"`
	DNSUpstreams     []string        `json:"dns_upstreams"`
	DNSSearch        []string        `json:"dns_search"`
	DNSRouting       []string        `json:"dns_routing_domains"`
	SOCKSProxy       string          `json:"socks_proxy,omitempty"`
	HTTPProxy        string          `json:"http_proxy,omitempty"`
	Forwards         []Forward       `json:"forwards,omitempty"`
	Intercepts       []InterceptInfo `json:"intercepts,omitempty"`
}

// apiHandlers are what the session socket serves.
type apiHandlers struct {
	status    func() Status
	down      func()
	intercept func(context.Context, InterceptSpec) (InterceptInfo, error)
	leave     func(service string) (string, error)
}

// serveAPI serves GET /status and POST /down on an owner-only Unix socket.
func serveAPI(ctx context.Context, path string, h apiHandlers) (io.Closer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("socket dir %s: %w", filepath.Dir(path), err)
	}
	_ = os.Remove(path) // a stale socket; a live session was ruled out before
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(h.status())
	})
	mux.HandleFunc("POST /intercept", func(w http.ResponseWriter, r *http.Request) {
		var spec InterceptSpec
		if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
			http.Error(w, "intercept: bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		info, err := h.intercept(r.Context(), spec)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(info)
	})
	mux.HandleFunc("POST /leave", func(w http.ResponseWriter, r *http.Request) {
		msg, err := h.leave(r.URL.Query().Get("service"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, msg+"\n")
	})
	mux.HandleFunc("POST /down", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
		if f, ok := w.(http.Flusher); ok {
			f.Flush() // the answer must leave before shutdown closes the server
		}
		go h.down()
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return closerFunc(func() error {
		err := srv.Close()
		_ = os.Remove(path)
		return err
	}), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// ErrNotRunning means no session answers on the socket.
var ErrNotRunning = errors.New("not up (start it with `bridgetun up`)")

// Client talks to a running session.
type Client struct{ http *http.Client }

// NewClient returns a client for the session socket at path.
func NewClient(path string) *Client {
	return &Client{http: &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// Status fetches the session's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://bridgetun/status", nil)
	resp, err := c.http.Do(req)
	if err != nil {
		return st, notRunning(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	return st, nil
}

// Down asks the session to end and waits until its process has exited,
// which it does only after removing routes and device.
func (c *Client) Down(ctx context.Context) error {
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://bridgetun/down", nil)
	// The session may close the connection while answering: whether it is
	// ending is judged by its process below, not by the reply.
	if resp, err := c.http.Do(req); err == nil {
		resp.Body.Close()
	}
	for {
		if !processAlive(st.PID) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("down: session still running: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond): // polling the socket until the session has cleaned up
		}
	}
}

// Intercept asks the session to intercept a Service; it returns once the
// workload's pods run the sidecar (or with why not).
func (c *Client) Intercept(ctx context.Context, spec InterceptSpec) (InterceptInfo, error) {
	var info InterceptInfo
	body, _ := json.Marshal(spec)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://bridgetun/intercept", strings.NewReader(string(body)))
	resp, err := c.long().Do(req)
	if err != nil {
		return info, notRunning(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		return info, errors.New(strings.TrimSpace(string(b)))
	}
	return info, json.NewDecoder(resp.Body).Decode(&info)
}

// Leave ends the session's intercept of service and waits for the workload
// to be restored.
// It returns what became of the workload.
func (c *Client) Leave(ctx context.Context, service string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://bridgetun/leave?service="+url.QueryEscape(service), nil)
	resp, err := c.long().Do(req)
	if err != nil {
		return "", notRunning(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
}

// long is the client without the short timeout: intercept and leave wait
// for rollouts (bounded by the caller's ctx).
func (c *Client) long() *http.Client {
	hc := *c.http
	hc.Timeout = 0
	return &hc
}

func notRunning(err error) error {
	var ne *net.OpError
	if errors.As(err, &ne) || errors.Is(err, os.ErrNotExist) {
		return ErrNotRunning
	}
	return err
}

// RunEnv is what `bridgetun run` adds to a command's environment so it
// reaches the cluster: proxy variables in netstack mode, and the gRPC
// resolver that honours the system's (split) DNS.
func RunEnv(st Status) []string {
	env := []string{"GRPC_DNS_RESOLVER=native"}
	if st.HTTPProxy != "" {
		u := "http://" + st.HTTPProxy
		env = append(env, "HTTP_PROXY="+u, "HTTPS_PROXY="+u, "http_proxy="+u, "https_proxy="+u)
	}
	if st.SOCKSProxy != "" {
		u := "socks5h://" + st.SOCKSProxy
		env = append(env, "ALL_PROXY="+u, "all_proxy="+u)
	}
	if st.HTTPProxy != "" || st.SOCKSProxy != "" {
		env = append(env, "NO_PROXY=localhost,127.0.0.0/8,::1", "no_proxy=localhost,127.0.0.0/8,::1")
	}
	// Kubernetes-style variables for forwarded Services point at the local
	// forwards, so code written against them works unchanged. As with the
	// kubelet, <SVC>_SERVICE_PORT and <SVC>_PORT are the first port's (the
	// first forward of the Service: forwards are in Service port order).
	seen := map[string]bool{}
	for _, f := range st.Forwards {
		if f.Service == "" {
			continue
		}
		host, port, _ := net.SplitHostPort(f.Local)
		name := strings.ToUpper(strings.ReplaceAll(f.Service, "-", "_"))
		proto := f.network()
		if !seen[name] {
			seen[name] = true
			env = append(env, name+"_SERVICE_HOST="+host, name+"_SERVICE_PORT="+port, name+"_PORT="+proto+"://"+f.Local)
		}
		pfx := fmt.Sprintf("%s_PORT_%d_%s", name, f.Port, strings.ToUpper(proto))
		env = append(env, pfx+"="+proto+"://"+f.Local, pfx+"_PROTO="+proto, pfx+"_PORT="+port, pfx+"_ADDR="+host)
	}
	return env
}
