package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/bridgetun/bridgetun/agent/api"
)

// Header-propagation traces (`bridgetun trace`, agent/api/trace.go): the
// session opens and reads traces at the gateway with the user's identity;
// the traced request itself is sent by the caller, through the tunnel
// (TUN) or the session's proxy (netstack).

// StartTrace opens a trace at the gateway (POST /v1/traces).
func (c controlClient) StartTrace(ctx context.Context, req api.TraceStartRequest) (api.Trace, error) {
	var t api.Trace
	err := c.call(ctx, http.MethodPost, "/v1/traces", req, &t)
	return t, err
}

// GetTrace reads one of the user's traces (GET /v1/traces/ID).
func (c controlClient) GetTrace(ctx context.Context, id string) (api.Trace, error) {
	var t api.Trace
	err := c.call(ctx, http.MethodGet, "/v1/traces/"+url.PathEscape(id), nil, &t)
	return t, err
}

// startTrace is the socket API's POST /trace.
func (s *Session) startTrace(ctx context.Context, req api.TraceStartRequest) (api.Trace, error) {
	t, err := s.link.control.StartTrace(ctx, req)
	if err != nil {
		return api.Trace{}, traceError("start a trace", err)
	}
	return t, nil
}

// getTrace is the socket API's GET /trace/ID.
func (s *Session) getTrace(ctx context.Context, id string) (api.Trace, error) {
	t, err := s.link.control.GetTrace(ctx, id)
	if err != nil {
		return api.Trace{}, traceError("read trace "+id, err)
	}
	return t, nil
}

// traceError names the step; a gateway without trace routes (older than
// this client) says to upgrade it.
func traceError(what string, err error) error {
	var ce *ControlError
	if errors.As(err, &ce) && ce.Status == http.StatusNotFound && !strings.Contains(ce.Msg, "no such trace") {
		return fmt.Errorf("%s: the gateway does not know traces (it is older than this bridgetun): run `bridgetun install --upgrade`", what)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// traceMux adds the trace calls to the socket API.
func traceMux(mux *http.ServeMux, start func(context.Context, api.TraceStartRequest) (api.Trace, error), get func(context.Context, string) (api.Trace, error)) {
	if start == nil || get == nil {
		return
	}
	mux.HandleFunc("POST /trace", func(w http.ResponseWriter, r *http.Request) {
		var req api.TraceStartRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			http.Error(w, "trace: bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		t, err := start(r.Context(), req)
		writeTraceAnswer(w, t, err)
	})
	mux.HandleFunc("GET /trace/{id}", func(w http.ResponseWriter, r *http.Request) {
		t, err := get(r.Context(), r.PathValue("id"))
		writeTraceAnswer(w, t, err)
	})
}

func writeTraceAnswer(w http.ResponseWriter, t api.Trace, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(t)
}

// StartTrace asks the session to open a trace at the gateway.
func (c *Client) StartTrace(ctx context.Context, req api.TraceStartRequest) (api.Trace, error) {
	body, _ := json.Marshal(req)
	return c.traceCall(ctx, http.MethodPost, "http://bridgetun/trace", strings.NewReader(string(body)))
}

// Trace reads one of the user's traces through the session.
func (c *Client) Trace(ctx context.Context, id string) (api.Trace, error) {
	return c.traceCall(ctx, http.MethodGet, "http://bridgetun/trace/"+url.PathEscape(id), nil)
}

func (c *Client) traceCall(ctx context.Context, method, u string, body io.Reader) (api.Trace, error) {
	var t api.Trace
	req, _ := http.NewRequestWithContext(ctx, method, u, body)
	resp, err := c.http.Do(req)
	if err != nil {
		return t, c.notRunning(err)
	}
	defer resp.Body.Close()
	if err := refused(resp); err != nil {
		return t, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return t, errors.New("the running session does not know traces (it is older than this bridgetun): restart it with `bridgetun down` and `bridgetun up`")
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		return t, errors.New(strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(resp.Body).Decode(&t); err != nil {
		return t, fmt.Errorf("trace: decode the session's answer: %w", err)
	}
	return t, nil
}
