package agent

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/bridgetun/bridgetun/agent/api"
)

// serveTraces serves the control API's trace calls for a verified caller:
// POST /v1/traces opens a trace owned by the caller, GET /v1/traces/ID
// answers it to its owner only.
func (c *Control) serveTraces(w http.ResponseWriter, r *http.Request, who Caller) {
	if c.icpt == nil {
		http.Error(w, "traces are not enabled on this gateway", http.StatusNotImplemented)
		return
	}
	traces := c.icpt.Traces()
	switch id, isGet := strings.CutPrefix(r.URL.Path, "/v1/traces/"); {
	case r.URL.Path == "/v1/traces" && r.Method == http.MethodPost:
		var req api.TraceStartRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			http.Error(w, "trace: bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		t, err := traces.Start(r.Context(), who.Identity, req, c.addrsOf(who.Identity)...)
		if err != nil {
			http.Error(w, err.Error(), traceStatus(err))
			return
		}
		c.log.Info("trace started", "id", t.ID, "user", who.User, "closes", t.Closes)
		writeJSON(w, t)
	case isGet && id != "" && r.Method == http.MethodGet:
		t, err := traces.Get(who.Identity, id)
		if err != nil {
			http.Error(w, err.Error(), traceStatus(err))
			return
		}
		writeJSON(w, t)
	default:
		http.NotFound(w, r)
	}
}

// traceStatus is the HTTP status of a failed trace call.
func traceStatus(err error) int {
	switch {
	case errors.Is(err, ErrNoTrace):
		return http.StatusNotFound
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrLimit):
		return http.StatusTooManyRequests
	}
	return http.StatusBadRequest
}

// serveSighting records a sidecar's report of a request (POST
// /v1/traces/sightings at the relay): the token's pod must back the
// Service it reports for, so a sighting names a Service no sidecar can
// choose.
func (r *Relay) serveSighting(w http.ResponseWriter, req *http.Request, pod SidecarPod) {
	var s api.TraceSighting
	if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 4096)).Decode(&s); err != nil {
		http.Error(w, "sighting: bad JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := validSighting(s); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := r.backs(req.Context(), pod, s.Namespace, s.Service); err != nil {
		r.refuse(w, err)
		return
	}
	r.tab.Traces().Record(s.Namespace, s.Service, s.RouteAs)
	w.WriteHeader(http.StatusNoContent)
}
