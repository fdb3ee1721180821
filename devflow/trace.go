package devflow

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/session"
)

// The trace workflow (`bridgetun trace URL`): open a trace at the gateway
// through the session, send one request carrying the trace's route-as
// value through the session's network (the TUN's routes, or its proxy in
// netstack mode), read which participating Services saw the value and
// which were called without it, and put them in order as a chain.

// TraceSession is the running session as the trace workflow uses it
// (*session.Client).
type TraceSession interface {
	StatusSource
	// StartTrace opens a trace at the gateway.
	StartTrace(ctx context.Context, req api.TraceStartRequest) (api.Trace, error)
	// Trace reads one of the user's traces.
	Trace(ctx context.Context, id string) (api.Trace, error)
}

var _ TraceSession = (*session.Client)(nil)

// TraceConfig configures Trace.
type TraceConfig struct {
	Session TraceSession // required
	URL     string       // http://… (required)
	Method  string       // "" = GET
	Header  http.Header  // added to the request; a route-as header is replaced by the trace's
	Timeout time.Duration
	// Transport overrides how the request is sent (tests); nil = through
	// the session: directly in TUN mode, its HTTP or SOCKS5 proxy in
	// netstack mode.
	Transport http.RoundTripper
}

// DefaultTraceTimeout bounds the traced request when TraceConfig.Timeout is 0.
const DefaultTraceTimeout = 10 * time.Second

// Trace verdicts.
const (
	TracePropagated   = "propagated"   // every participating Service on the path saw the value
	TraceDropped      = "dropped"      // a participating Service was called without it
	TraceInconclusive = "inconclusive" // no participating Service reported the request
)

// TraceResult is what `bridgetun trace` prints (--json: this object).
type TraceResult struct {
	ID     string      `json:"id"` // the route-as value sent
	Method string      `json:"method"`
	URL    string      `json:"url"`
	Status int         `json:"status"`          // the answer's HTTP status; 0 = none
	Error  string      `json:"error,omitempty"` // the request failed
	Chain  []TraceStep `json:"chain"`           // in the order the Services were reached
	// Verdict is propagated, dropped or inconclusive; Reason says why in
	// one line.
	Verdict   string `json:"verdict"`
	Reason    string `json:"reason"`
	Truncated bool   `json:"truncated,omitempty"` // the gateway kept only part of the hops
	// Gateway lists the connections the gateway forwarded for this
	// workstation while the trace was open (its own hop): where the
	// request entered the cluster. Empty: the request did not go through
	// the tunnel (or the gateway predates this).
	Gateway []api.TraceFlow `json:"gateway,omitempty"`
}

// TraceStep is one participating Service on the request's path.
type TraceStep struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	// Propagated: it received the trace's value. Else it was called
	// without any route-as header while the trace was open.
	Propagated bool   `json:"propagated"`
	Seen       int    `json:"seen"`             // requests with the value
	Without    int    `json:"without"`          // requests without the header (reports: one per sidecar)
	Reason     string `json:"reason,omitempty"` // a dropped step: where the header went missing
	// At is when it first saw the value, or else was first called
	// without the header (the gateway's clock): the chain's order.
	At time.Time `json:"at"`
}

// Trace runs the trace workflow. Its error is for what kept it from
// running (no session, a gateway that refused the trace); a request that
// failed is in the result, with what the sidecars saw of it.
func Trace(ctx context.Context, cfg TraceConfig) (TraceResult, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return TraceResult{}, fmt.Errorf("trace: %q is not an http:// URL (e.g. http://frontend/)", cfg.URL)
	}
	timeout := cmp.Or(cfg.Timeout, DefaultTraceTimeout)
	st, err := cfg.Session.Status(ctx)
	if err != nil {
		return TraceResult{}, fmt.Errorf("trace: %w", err)
	}
	rt := cfg.Transport
	if rt == nil {
		if rt, err = sessionTransport(st); err != nil {
			return TraceResult{}, err
		}
	}
	// The window covers the request and a margin for the reports.
	window := min(int((timeout+5*time.Second)/time.Second), int(api.MaxTraceWindow/time.Second))
	tr, err := cfg.Session.StartTrace(ctx, api.TraceStartRequest{WindowSeconds: window})
	if err != nil {
		return TraceResult{}, fmt.Errorf("trace: %w", err)
	}
	res := TraceResult{ID: tr.ID, Method: cmp.Or(cfg.Method, http.MethodGet), URL: cfg.URL}
	res.Status, err = sendTraced(ctx, rt, res.Method, u, cfg.Header, tr.ID, timeout)
	if err != nil {
		res.Error = err.Error()
	}
	// Every sidecar reported before it passed the request on, so the
	// answer means the reports are in.
	got, err := cfg.Session.Trace(ctx, tr.ID)
	if err != nil {
		return TraceResult{}, fmt.Errorf("trace: %w", err)
	}
	res.Chain, res.Verdict, res.Reason = Chain(got.Hops)
	res.Truncated = got.Truncated
	res.Gateway = got.Gateway
	return res, nil
}

// sendTraced sends one request with the trace's value and returns the
// answer's status (its body is read and dropped).
func sendTraced(ctx context.Context, rt http.RoundTripper, method string, u *url.URL, h http.Header, id string, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, u, err)
	}
	for k, vs := range h {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set(api.RouteAsHeader, id)
	hc := &http.Client{Transport: rt, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, nil
}

// sessionTransport sends requests the way the session carries them: in TUN
// mode straight out (the OS routes and resolves cluster names into the
// tunnel), in netstack mode through the session's HTTP proxy, else its
// SOCKS5 proxy. No proxy from the environment is used either way.
func sessionTransport(st session.Status) (http.RoundTripper, error) {
	t := &http.Transport{Proxy: nil, DisableKeepAlives: true, DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext}
	if st.Mode != "netstack" {
		return t, nil
	}
	var auth session.ProxyAuth
	if st.ProxyAuth != nil {
		auth = *st.ProxyAuth
	}
	var pu *url.URL
	switch {
	case st.HTTPProxy != "":
		pu = &url.URL{Scheme: "http", Host: st.HTTPProxy}
		if !auth.HTTP.IsZero() {
			pu.User = url.UserPassword(auth.HTTP.User, auth.HTTP.Password)
		}
	case st.SOCKSProxy != "":
		pu = &url.URL{Scheme: "socks5", Host: st.SOCKSProxy}
		if !auth.SOCKS.IsZero() {
			pu.User = url.UserPassword(auth.SOCKS.User, auth.SOCKS.Password)
		}
	default:
		return nil, errors.New("trace: the netstack session has no proxy to send the request through: start it with --http-proxy or --socks")
	}
	t.Proxy = http.ProxyURL(pu)
	return t, nil
}

// Chain orders a trace's hops as the request went: each Service at the
// time it first saw the value, or, if it never did, the time it was first
// called without the header. A Service called only without the header is
// a dropped step, blamed on the step before it (the Service that called it
// is the one that did not pass the header on; with concurrent traffic
// without the header the blame is a best guess by time).
func Chain(hops []api.TraceHop) (steps []TraceStep, verdict, reason string) {
	for _, h := range hops {
		s := TraceStep{Namespace: h.Namespace, Service: h.Service, Seen: h.Seen, Without: h.Without}
		switch {
		case h.Seen > 0:
			s.Propagated, s.At = true, h.FirstSeen
		case h.Without > 0:
			s.At = h.FirstWithout
		default:
			continue
		}
		steps = append(steps, s)
	}
	slices.SortStableFunc(steps, func(a, b TraceStep) int { return a.At.Compare(b.At) })
	if len(steps) == 0 {
		return steps, TraceInconclusive, "no participating Service reported the request: only Services with a bridgetun sidecar take part (intercept them with --isolate)"
	}
	var dropped []string
	for i := range steps {
		s := &steps[i]
		if s.Propagated {
			continue
		}
		switch {
		case i == 0:
			s.Reason = "called without the header before any participating Service saw it: it was lost on the way in (a Service without a bridgetun sidecar, or a proxy in front of it)"
		case steps[i-1].Propagated:
			s.Reason = fmt.Sprintf("%s dropped it on its call to %s", steps[i-1].Service, s.Service)
		default:
			s.Reason = fmt.Sprintf("called without it, after %s, which had lost it already", steps[i-1].Service)
		}
		dropped = append(dropped, s.Service)
	}
	if len(dropped) > 0 {
		first := steps[slices.IndexFunc(steps, func(s TraceStep) bool { return !s.Propagated })]
		return steps, TraceDropped, fmt.Sprintf("%s was called without %s: %s", first.Service, api.RouteAsHeader, first.Reason)
	}
	return steps, TracePropagated, fmt.Sprintf("every participating Service saw %s (%d)", api.RouteAsHeader, len(steps))
}

// Render writes the chain in one line and the verdict under it, e.g.
//
//	frontend ✓ → api ✓ → stats ✗ "api dropped it on its call to stats"
//
// Services outside namespace ns are named ns/svc.
func (r TraceResult) Render(w io.Writer, ns string) {
	answer := fmt.Sprintf("%d %s", r.Status, http.StatusText(r.Status))
	if r.Error != "" {
		answer = "failed: " + r.Error
	}
	fmt.Fprintf(w, "trace %s: %s %s → %s\n", r.ID, r.Method, r.URL, answer)
	if len(r.Chain) > 0 || len(r.Gateway) > 0 {
		parts := make([]string, 0, len(r.Chain)+1)
		if len(r.Gateway) > 0 {
			dsts := make([]string, 0, len(r.Gateway))
			for _, f := range r.Gateway {
				if !slices.Contains(dsts, f.Dst) {
					dsts = append(dsts, f.Dst)
				}
			}
			parts = append(parts, fmt.Sprintf("gateway ✓ (%s)", strings.Join(dsts, ", ")))
		}
		for _, s := range r.Chain {
			name := s.Service
			if s.Namespace != ns {
				name = s.Namespace + "/" + s.Service
			}
			if s.Propagated {
				parts = append(parts, name+" ✓")
			} else {
				parts = append(parts, fmt.Sprintf("%s ✗ %q", name, s.Reason))
			}
		}
		fmt.Fprintln(w, strings.Join(parts, " → "))
	}
	if r.Truncated {
		fmt.Fprintln(w, "(the gateway kept only part of the Services that reported)")
	}
	fmt.Fprintf(w, "%s: %s\n", r.Verdict, r.Reason)
}

// ExitCode is the trace's exit code: 0 propagated (and answered), 1
// dropped or the request failed, 2 inconclusive.
func (r TraceResult) ExitCode() int {
	switch {
	case r.Verdict == TraceDropped:
		return 1
	case r.Verdict == TraceInconclusive:
		return 2
	case r.Error != "":
		return 1
	}
	return 0
}
