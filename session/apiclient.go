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
	"strings"
	"time"
)

// ErrNotRunning means no session answers on the socket.
var ErrNotRunning = errors.New("not up (start it with `bridgetun up`)")

// Client talks to a running session.
type Client struct {
	http   *http.Client
	marker string // a root-held session's owner record (apiclient_owner.go)
	uid    int    // the caller, for the refusal naming another owner
}

// NewClient returns a client for the session socket at path.
func NewClient(path string) *Client {
	return &Client{marker: markerPath(), uid: os.Getuid(), http: &http.Client{
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
		return st, c.notRunning(err)
	}
	defer resp.Body.Close()
	if err := refused(resp); err != nil {
		return st, err
	}
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
// workload's pods run the sidecar (or with why not, in one line), telling
// progress each step the session reports on the way (nil = none), from the
// calling goroutine.
func (c *Client) Intercept(ctx context.Context, spec InterceptSpec, progress func(InterceptEvent)) (InterceptInfo, error) {
	var info InterceptInfo
	body, _ := json.Marshal(spec)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://bridgetun/intercept", strings.NewReader(string(body)))
	resp, err := c.long().Do(req)
	if err != nil {
		return info, c.notRunning(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		return info, errors.New(strings.TrimSpace(string(b)))
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), ndjsonType) {
		// A session started by an earlier bridgetun answers with the result alone.
		return info, json.NewDecoder(resp.Body).Decode(&info)
	}
	return readInterceptStream(resp.Body, progress)
}

// Leave ends the session's intercept of service and waits for the workload
// to be restored.
// It returns what became of the workload.
func (c *Client) Leave(ctx context.Context, service string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://bridgetun/leave?service="+url.QueryEscape(service), nil)
	resp, err := c.long().Do(req)
	if err != nil {
		return "", c.notRunning(err)
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
// reaches the cluster: proxy variables in netstack mode (with the proxies'
// credentials when st carries them, as the socket API's answer does), and
// the gRPC resolver that honours the system's (split) DNS.
func RunEnv(st Status) []string {
	env := []string{"GRPC_DNS_RESOLVER=native"}
	var auth ProxyAuth
	if st.ProxyAuth != nil {
		auth = *st.ProxyAuth
	}
	if st.HTTPProxy != "" {
		u := proxyURL("http", st.HTTPProxy, auth.HTTP)
		env = append(env, "HTTP_PROXY="+u, "HTTPS_PROXY="+u, "http_proxy="+u, "https_proxy="+u)
	}
	if st.SOCKSProxy != "" {
		u := proxyURL("socks5h", st.SOCKSProxy, auth.SOCKS)
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

// proxyURL is scheme://[user:pass@]addr, the credentials escaped.
func proxyURL(scheme, addr string, c ProxyCredentials) string {
	u := url.URL{Scheme: scheme, Host: addr}
	if !c.IsZero() {
		u.User = url.UserPassword(c.User, c.Password)
	}
	return u.String()
}
