// Package api holds the wire types of the gateway: the control API that
// workstations call, the routes protocol that sidecars follow, and the header
// names both sides agree on. It imports only the standard library, so the
// sidecar and the workstation can speak to the gateway without linking it.
package api

import (
	"net/netip"
	"time"
)

// TunnelNetwork is where workstation tunnel addresses come from. It is a
// benchmarking range (RFC 2544) that real networks rarely route, unlike the
// CGNAT range that other VPNs already claim.
var TunnelNetwork = netip.MustParsePrefix("198.19.0.0/16")

// GatewayTunnelAddr is the gateway's own address in TunnelNetwork.
var GatewayTunnelAddr = netip.MustParseAddr("198.19.0.1")

// Caller identity. Every control call carries the caller's own Kubernetes
// credential, which the gateway verifies with the API server
// (TokenReview), so registrations and intercepts belong to an identity, not
// to whoever knows a public key:
//
//	Authorization: Bearer <the kubeconfig's bearer token>
//
// A kubeconfig without a bearer token (client certificates) proves its
// identity once per session with a CertificateSigningRequest that the API
// server stamps with the creator's name (IdentityCSRHeader names it,
// IdentitySecretHeader carries the secret whose hash its subject holds).
// 401 = no or unverifiable identity; 403 = not yours (the message names
// the owner).
const (
	IdentityCSRHeader    = "Bridgetun-Identity-Csr"
	IdentitySecretHeader = "Bridgetun-Identity-Secret"
	// IdentitySignerName is the signer of identity CSRs: nobody signs
	// them, the gateway only reads who created one.
	IdentitySignerName = "bridgetun.io/identity"
	// RelayTokenAudience is the audience of the projected ServiceAccount
	// token a sidecar presents to the relay: the kubelet rotates it and
	// it is bound to the sidecar's pod.
	RelayTokenAudience = "bridgetun-relay"
)

// RegisterRequest asks the gateway to admit a workstation.
type RegisterRequest struct {
	PublicKey string `json:"public_key"` // base64 WireGuard public key
	Version   string `json:"version"`    // client version, for mismatch reports
	// Proof is tunnel.RegistrationProof(private key, gateway public key,
	// sha256 of the caller's credential), base64: only the holder of
	// the key's private part can register it, and only for itself.
	Proof string `json:"proof"`
	// AlsoProxy lists extra ranges (CIDRs) the workstation routes to the
	// gateway beyond the cluster's pod and service ranges; the gateway's
	// destination policy admits them for this peer.
	AlsoProxy []string `json:"also_proxy,omitempty"`
	// AllowAPIServer lets this peer reach the API server through the
	// gateway (`up --allow-api-server`); refused by default.
	AllowAPIServer bool `json:"allow_api_server,omitempty"`
}

// InfoResponse is GET /v1/info: what a workstation needs before it
// registers (the gateway's public key, for the registration proof).
type InfoResponse = RegisterResponse

// RegisterResponse tells a workstation how to join.
type RegisterResponse struct {
	Address          string `json:"address"`            // the workstation's tunnel address, /32
	GatewayPublicKey string `json:"gateway_public_key"` // base64
	GatewayAddress   string `json:"gateway_address"`    // the gateway's tunnel address (also its DNS listener)
	ClusterDNS       string `json:"cluster_dns"`        // the cluster resolver the gateway uses
	ClusterDomain    string `json:"cluster_domain"`
	User             string `json:"user,omitempty"` // the caller as the gateway verified it
	Namespace        string `json:"namespace"`      // the gateway's namespace
	Version          string `json:"version"`        // gateway version
	TTLSeconds       int    `json:"ttl_seconds"`    // register again within this
	// Admitted: this call admitted the key anew (the gateway did not know
	// it: it restarted, or the workstation was silent past the TTL), so no
	// WireGuard session exists at the gateway: handshake again at once.
	Admitted bool `json:"admitted,omitempty"`
}

// LeaveRequest drops a workstation's intercept of a Service.
type LeaveRequest struct {
	PublicKey string `json:"public_key"`
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
}

// LeaveResponse says whether anything was dropped and how many intercepts
// (anyone's) remain on the same workload: at 0 the caller asks the gateway
// to restore it (RestoreRequest).
type LeaveResponse struct {
	Removed   bool `json:"removed"`
	Remaining int  `json:"remaining"`
}

// RestoreRequest asks the gateway to put a workload's original pod
// template back (POST /v1/workloads/restore), as it patched it: the caller
// must be allowed to update the workload, and nothing at the gateway may
// hold it (409 names how many intercepts do).
type RestoreRequest struct {
	Workload Workload `json:"workload"`
}

// RestoreResponse: Restored = the gateway changed the template back
// (false: it was not patched).
type RestoreResponse struct {
	Restored bool `json:"restored"`
}

// RenewRequest extends a workstation's intercept leases.
type RenewRequest struct {
	PublicKey string   `json:"public_key"`
	IDs       []string `json:"ids"`
}

// RenewResponse lists ids the gateway does not route (it restarted, or
// their lease ran out and only the grace hold is left): add them again.
type RenewResponse struct {
	Unknown    []string `json:"unknown,omitempty"`
	TTLSeconds int      `json:"ttl_seconds"`
	// UnknownPeer: the workstation's registration is gone (it was silent
	// longer than the registration TTL, or the gateway restarted):
	// register again before adding the unknown ids.
	UnknownPeer bool `json:"unknown_peer,omitempty"`
	// Sidecars names, per renewed id, the pods whose sidecar polls the
	// relay for its Service now or did in the last 40 s: they run and
	// reach the gateway. nil from a gateway that does not say.
	Sidecars map[string][]string `json:"sidecars,omitempty"`
}

// Grace bounds. An intercept has two lifetimes at the gateway: its route
// lease (seconds, renewed by the workstation; when it runs out the sidecars
// pass traffic through to the original container) and its grace hold (the
// workload stays patched this long after the last renewal, so a workstation
// back from sleep re-attaches without a rollout). The workload is restored
// only when neither remains.
const (
	DefaultGrace = 15 * time.Minute // InterceptRequest.GraceSeconds 0
	MaxGrace     = 24 * time.Hour   // the gateway caps longer ones
)

// InterceptVerb is the RBAC verb the gateway reviews (SubjectAccessReview)
// before it patches a workload on a caller's behalf: a custom verb on the
// workload's resource (apps/deployments, …), so a Role can allow
// intercepting a workload without allowing edits of it. "update" is
// accepted too; --force (replacing a colleague's intercept) needs update.
const InterceptVerb = "intercept"

// Workload names a patched workload (Kubernetes-free: kind and name as strings).
type Workload struct {
	Namespace string `json:"namespace"`
	Kind      string `json:"kind"` // Deployment, StatefulSet, ReplicaSet
	Name      string `json:"name"`
}

func (w Workload) String() string { return w.Namespace + "/" + w.Kind + "/" + w.Name }

// InterceptRequest asks the gateway to route a Service's inbound traffic to
// the requesting workstation.
type InterceptRequest struct {
	PublicKey string `json:"public_key"` // the workstation's WireGuard key (it must be registered)
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	// ServicePort names the Service port to intercept ("" = its only
	// one). The gateway resolves the workload behind it itself and
	// patches that, after checking the caller may update it; Workload is
	// what the gateway found (a caller's value is not trusted).
	ServicePort string   `json:"service_port,omitempty"`
	Workload    Workload `json:"workload"`
	Port        int      `json:"port"`               // workstation port the gateway dials on the tunnel address
	RouteAs     string   `json:"route_as,omitempty"` // "" = full intercept
	// Holder is set by the gateway: the caller's verified Kubernetes user
	// name, plus the client's own label in parentheses (Label).
	Holder string `json:"holder"`
	Label  string `json:"label,omitempty"` // e.g. host name, shown after the user name
	// Force replaces another identity's intercept of the same Service
	// (full) or route-as value; the gateway allows it only to a caller
	// who may update the workload.
	Force bool `json:"force,omitempty"`
	// GraceSeconds is how long the workload stays patched after the last
	// renewal; 0 = DefaultGrace; the gateway caps it at MaxGrace. An
	// Intercept the gateway returns carries the value it applies.
	GraceSeconds int `json:"grace_seconds,omitempty"`
}

// Intercept is an intercept as the gateway knows it: routed (its lease is
// live) or held (the lease ran out; the workload stays patched until
// HeldUntil unless the workstation adds it again).
type Intercept struct {
	InterceptRequest
	ID        string    `json:"id"`
	Target    string    `json:"target"`
	Expires   time.Time `json:"expires"`             // the route lease's end
	Held      bool      `json:"held,omitempty"`      // no route: only the grace hold is left
	HeldUntil time.Time `json:"held_until,omitzero"` // Held: when the workload is restored
	// Mine: the caller holds it. Listings carry other identities'
	// intercepts without their keys or targets.
	Mine bool `json:"mine,omitempty"`
	// Patched: this call patched the workload (its pods roll); false when
	// it already ran the sidecar.
	Patched bool `json:"patched,omitempty"`
}

// The gateway ↔ sidecar protocol. A sidecar reaches the gateway's relay
// listener (RelayPort, on the pod network, behind the bridgetun-relay
// Service) with its pod's projected ServiceAccount token (audience
// RelayTokenAudience) as a bearer token. The gateway verifies it with a
// TokenReview and binds it: the token's pod must back the Service it asks
// about, and may CONNECT only to the targets of that Service's routes.
//
//	GET /v1/routes?namespace=NS&service=SVC&after=N
//	    Long poll: answers the RouteTable of NS/SVC as soon as its Version
//	    is greater than N, or after about 25 s with the current one.
//	    401 on a token the API server does not accept (expired, another
//	    audience); 403 when the token's pod does not back NS/SVC.
//	CONNECT TARGET HTTP/1.1  (TARGET = a Route's Target, addr:port)
//	    The gateway dials TARGET through its netstack (into the workstation's
//	    tunnel) within DialTimeout; 200 and then raw bytes both ways, 403 if
//	    TARGET is not a live route's target of a Service the token's pod
//	    backs, 502 if the dial failed.

// RelayPort is where the gateway serves sidecars on the pod network.
const RelayPort = 8083

// RouteAsHeader is the header isolated intercepts route on.
const RouteAsHeader = "Kubernetes-Route-As"

// ServedByHeader tells a developer who answered a request that went through
// an isolating sidecar: "local" (a workstation) or "cluster".
const ServedByHeader = "Bridgetun-Served-By"

// Route says where one intercept's traffic goes.
type Route struct {
	ID      string `json:"id"`
	Target  string `json:"target"`             // workstation tunnel addr:port the gateway dials
	RouteAs string `json:"route_as,omitempty"` // "" = every connection (a full intercept)
	Holder  string `json:"holder"`             // who holds it, for messages
}

// RouteTable is what the sidecars of one Service follow. At most one full
// route exists, and never together with isolated ones (the gateway refuses).
type RouteTable struct {
	Version uint64  `json:"version"`
	Routes  []Route `json:"routes"`
	// TraceEpoch is non-zero while a trace (trace.go) is open at the
	// gateway and changes with each new one: sidecars then report their
	// first request without the route-as header once per epoch.
	TraceEpoch uint64 `json:"trace_epoch,omitempty"`
}

// Full returns the full intercept's route, if there is one.
func (t RouteTable) Full() (Route, bool) {
	for _, r := range t.Routes {
		if r.RouteAs == "" {
			return r, true
		}
	}
	return Route{}, false
}

// ForRouteAs returns the isolated route for a header value.
func (t RouteTable) ForRouteAs(v string) (Route, bool) {
	if v == "" {
		return Route{}, false
	}
	for _, r := range t.Routes {
		if r.RouteAs == v {
			return r, true
		}
	}
	return Route{}, false
}
