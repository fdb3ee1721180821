package sidecar

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/splice"
)

// GatewayClientConfig configures a GatewayClient.
type GatewayClientConfig struct {
	Addr string // the gateway's relay listener, host:port (required), e.g. "bridgetun-relay.bridgetun:8083"
	// Token returns the bearer token to send, asked for each request (the
	// pod's projected ServiceAccount token, which the kubelet rotates:
	// TokenFile); required.
	Token func() (string, error)
	Log   *slog.Logger // nil discards
}

// TokenFile returns a GatewayClientConfig.Token that reads path on every
// call: the kubelet replaces a projected token's file before it expires.
func TokenFile(path string) func() (string, error) {
	return func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("read the relay token: %w: the pod needs bridgetun's projected ServiceAccount token volume (redo the intercept to repair the pod)", err)
		}
		tok := strings.TrimSpace(string(b))
		if strings.ContainsAny(tok, " \t\r\n") {
			return "", fmt.Errorf("relay token %s is not one token", path)
		}
		if tok == "" {
			return "", fmt.Errorf("relay token %s is empty: the pod needs bridgetun's projected ServiceAccount token volume (redo the intercept to repair the pod)", path)
		}
		return tok, nil
	}
}

// GatewayClient is the sidecar's side of the protocol in agent/routes.go:
// it follows a Service's routes and dials workstations through the relay.
type GatewayClient struct {
	cfg    GatewayClientConfig
	log    *slog.Logger
	http   *http.Client
	dialer net.Dialer
}

const (
	pollTimeout     = time.Minute // above the gateway's ~25 s long poll
	maxPollBackoff  = 2 * time.Second
	failureLogEvery = time.Minute
)

// NewGatewayClient returns a client of the gateway at cfg.Addr.
func NewGatewayClient(cfg GatewayClientConfig) *GatewayClient {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &GatewayClient{cfg: cfg, log: obs.Component(log, "gateway_client")}
	c.http = &http.Client{
		Timeout: pollTimeout,
		// Its own transport: no proxy from the environment, no shared pool.
		Transport: &http.Transport{DialContext: c.dialer.DialContext, MaxIdleConnsPerHost: 1, IdleConnTimeout: pollTimeout},
	}
	return c
}

// Poll asks once for the routes of namespace/service. The gateway answers
// as soon as their version is greater than after, or after its long-poll
// time with the current table.
func (c *GatewayClient) Poll(ctx context.Context, namespace, service string, after uint64) (api.RouteTable, error) {
	q := url.Values{"namespace": {namespace}, "service": {service}, "after": {strconv.FormatUint(after, 10)}}
	u := url.URL{Scheme: "http", Host: c.cfg.Addr, Path: "/v1/routes", RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return api.RouteTable{}, fmt.Errorf("routes of %s/%s: %w", namespace, service, err)
	}
	token, err := c.cfg.Token()
	if err != nil {
		return api.RouteTable{}, fmt.Errorf("routes of %s/%s: %w", namespace, service, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.http.Do(req)
	if err != nil {
		return api.RouteTable{}, fmt.Errorf("routes of %s/%s from gateway %s: %w", namespace, service, c.cfg.Addr, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized, http.StatusForbidden:
		return api.RouteTable{}, fmt.Errorf("routes of %s/%s: gateway %s refused the pod's relay token (%s): %s: check the gateway's log, or redo the intercept to repair the pod", namespace, service, c.cfg.Addr, resp.Status, readSnippet(resp.Body))
	default:
		return api.RouteTable{}, fmt.Errorf("routes of %s/%s: gateway %s answered %s: %s", namespace, service, c.cfg.Addr, resp.Status, readSnippet(resp.Body))
	}
	var t api.RouteTable
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&t); err != nil {
		return api.RouteTable{}, fmt.Errorf("routes of %s/%s: decode gateway answer: %w", namespace, service, err)
	}
	return t, nil
}

// WatchRoutes long-polls the routes of namespace/service and calls onChange
// with every table whose Version differs from the last one (a restarted
// gateway may count from lower). Failures are logged and retried with a
// backoff capped at 2 s. The first failure reports an empty table: every
// relay goes through the gateway, so while it does not answer no
// workstation can be reached, and a restarted gateway starts with no
// routes until workstations register again. It returns nil when ctx ends.
func (c *GatewayClient) WatchRoutes(ctx context.Context, namespace, service string, onChange func(api.RouteTable)) error {
	if namespace == "" || service == "" {
		return errors.New("watch routes: namespace and service are required")
	}
	log := c.log.With("namespace", namespace, "service", service)
	var (
		last                     api.RouteTable // as last reported
		backoff                  time.Duration
		failingSince, lastLogged time.Time
	)
	for {
		t, err := c.Poll(ctx, namespace, service, last.Version)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			if !failingSince.IsZero() {
				log.Info("gateway reachable again", "after", time.Since(failingSince).Round(time.Second).String())
			}
			backoff, failingSince = 0, time.Time{}
			if t.Version != last.Version {
				last = t
				log.Info("routes changed", "version", t.Version, "routes", describeRoutes(t))
				onChange(t)
			}
			continue
		}
		now := time.Now()
		switch {
		case failingSince.IsZero():
			failingSince, lastLogged = now, now
			log.Warn("cannot get routes; retrying", "err", err)
		case now.Sub(lastLogged) >= failureLogEvery:
			lastLogged = now
			log.Warn("still cannot get routes; retrying", "for", now.Sub(failingSince).Round(time.Second).String(), "err", err)
		}
		if len(last.Routes) > 0 {
			log.Warn("dropping routes: the gateway is unreachable; all traffic goes to the original container")
			last = api.RouteTable{}
			onChange(last)
		}
		backoff = min(max(2*backoff, 100*time.Millisecond), maxPollBackoff)
		t0 := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t0.Stop()
			return nil
		case <-t0.C:
		}
	}
}

// Dial opens a relayed connection to target (a Route's Target) through the
// gateway. The whole handshake respects ctx; the returned connection does
// not depend on ctx afterwards.
func (c *GatewayClient) Dial(ctx context.Context, target string) (net.Conn, error) {
	if target == "" || strings.ContainsAny(target, " \t\r\n") {
		return nil, fmt.Errorf("relay to %q: not an addr:port", target)
	}
	token, err := c.cfg.Token()
	if err != nil {
		return nil, fmt.Errorf("relay to %s: %w", target, err)
	}
	conn, err := c.dialer.DialContext(ctx, "tcp", c.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("relay to %s: dial gateway %s: %w", target, c.cfg.Addr, err)
	}
	// ctx's end (deadline or cancel) interrupts the handshake's I/O.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (net.Conn, error) {
		stop()
		_ = conn.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil, err
	}
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\nAuthorization: Bearer " + token + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return fail(fmt.Errorf("relay to %s: write to gateway %s: %w", target, c.cfg.Addr, err))
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return fail(fmt.Errorf("relay to %s: read gateway %s answer: %w", target, c.cfg.Addr, err))
	}
	if resp.StatusCode != http.StatusOK {
		msg := readSnippet(resp.Body)
		return fail(fmt.Errorf("relay to %s: gateway answered %s: %s", target, resp.Status, msg))
	}
	if !stop() {
		return fail(fmt.Errorf("relay to %s: %w", target, ctx.Err()))
	}
	_ = conn.SetDeadline(time.Time{})
	// Reads first drain what was buffered with the gateway's answer (the
	// workstation may speak first).
	return &splice.BufferedConn{Conn: conn, R: br}, nil
}

// RouteState holds the latest route table. It is a RouteSource, fed by
// WatchRoutes through Set; the zero value holds no routes.
type RouteState struct {
	p atomic.Pointer[api.RouteTable]
}

var _ RouteSource = (*RouteState)(nil)

// Current implements RouteSource.
func (s *RouteState) Current() api.RouteTable {
	if t := s.p.Load(); t != nil {
		return *t
	}
	return api.RouteTable{}
}

// Set replaces the table.
func (s *RouteState) Set(t api.RouteTable) {
	t.Routes = slices.Clone(t.Routes)
	s.p.Store(&t)
}

// describeRoutes summarises a table for a log line.
func describeRoutes(t api.RouteTable) string {
	if len(t.Routes) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(t.Routes))
	for _, r := range t.Routes {
		as := r.RouteAs
		if as == "" {
			as = "(all)"
		}
		parts = append(parts, fmt.Sprintf("%s->%s (%s)", as, r.Target, r.Holder))
	}
	return strings.Join(parts, ", ")
}

// readSnippet returns the start of an error body, on one line.
func readSnippet(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 512))
	s := strings.Join(strings.Fields(string(b)), " ")
	if s == "" {
		return "(no body)"
	}
	return s
}
