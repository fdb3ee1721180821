package api

import "time"

// Header-propagation traces (`bridgetun trace URL`). Isolated intercepts
// route on RouteAsHeader, so every service on a request's path must pass it
// on to the services it calls; a trace checks that. The workstation opens
// a trace at the gateway, which answers a unique route-as value (ID, with
// TracePrefix), and sends one request carrying it. While the trace is open
// the sidecars of intercepted Services (they proxy HTTP request by request
// when the Service has isolated routes) report to the relay each request
// that carries a trace value, and the first request without the header:
//
//	POST /v1/traces               (control API, caller's identity) TraceStartRequest → Trace
//	GET  /v1/traces/ID            (control API, the trace's owner only) → Trace with its hops
//	POST /v1/traces/sightings     (relay, the sidecar's pod token) TraceSighting → 204
//
// The relay attributes a sighting to the Service only after checking that
// the token's pod backs it (the sidecar's claim is not trusted), and
// stamps it with the gateway's clock. Route tables carry TraceEpoch while a
// trace is open, so sidecars know to report requests without the header.
// A Service without a bridgetun sidecar (not intercepted in isolated mode
// by anyone on the gateway) does not take part: it appears in no trace.

// TracePrefix starts every trace's route-as value; a sidecar reports only
// values with it (other values are developers' routes, not traces).
const TracePrefix = "bt-trace-"

// Trace bounds: an open trace accepts sightings for at most MaxTraceWindow;
// its record is kept TraceRetention after it started.
const (
	DefaultTraceWindow = 15 * time.Second
	MaxTraceWindow     = time.Minute
	TraceRetention     = 5 * time.Minute
)

// TraceStartRequest opens a trace (POST /v1/traces).
type TraceStartRequest struct {
	// WindowSeconds is how long the trace accepts sightings: the
	// request's timeout plus a margin. 0 = DefaultTraceWindow; capped at
	// MaxTraceWindow.
	WindowSeconds int `json:"window_seconds,omitempty"`
}

// Trace is one trace as the gateway recorded it.
type Trace struct {
	ID      string    `json:"id"`    // the route-as value to send (TracePrefix + random)
	Owner   string    `json:"owner"` // the verified user who opened it
	Started time.Time `json:"started"`
	Closes  time.Time `json:"closes"` // sightings after this are not recorded
	// Hops are the participating Services that reported a request while
	// the trace was open, in no particular order (the client orders them).
	Hops []TraceHop `json:"hops"`
	// Truncated: more Services reported than the gateway keeps per trace.
	Truncated bool `json:"truncated,omitempty"`
	// Gateway is the gateway's own hop: the TCP connections the owner's
	// workstations opened through it while the trace was open (the first
	// few), so the chain starts where the request entered the cluster.
	Gateway []TraceFlow `json:"gateway,omitempty"`
}

// TraceFlow is one connection the gateway forwarded during a trace.
type TraceFlow struct {
	Dst string    `json:"dst"` // the cluster address dialled, IP:port
	At  time.Time `json:"at"`  // the gateway's clock
}

// TraceHop is what one Service's sidecars reported during a trace.
type TraceHop struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	// Seen counts requests carrying the trace's value; FirstSeen is the
	// gateway's time of the first.
	Seen      int       `json:"seen"`
	FirstSeen time.Time `json:"first_seen,omitzero"`
	// Without counts requests without any route-as header while the trace
	// was open (at most one report per sidecar and trace start), FirstWithout
	// the first one's time: a Service called only without the header is
	// where a previous hop dropped it.
	Without      int       `json:"without"`
	FirstWithout time.Time `json:"first_without,omitzero"`
}

// TraceSighting is a sidecar's report of one request on the intercepted
// port (POST /v1/traces/sightings at the relay).
type TraceSighting struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	// RouteAs is the request's trace value (TracePrefix…), or "" for a
	// request without the header.
	RouteAs string `json:"route_as,omitempty"`
}
