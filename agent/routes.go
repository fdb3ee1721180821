package agent

// The gateway ↔ sidecar protocol. A sidecar reaches the gateway's relay
// listener (RelayPort, on the pod network, behind the bridgetun-relay
// Service) with the sidecar token as a bearer token:
//
//	GET /v1/routes?namespace=NS&service=SVC&after=N
//	    Long poll: answers the RouteTable of NS/SVC as soon as its Version
//	    is greater than N, or after about 25 s with the current one.
//	    401 on a wrong token.
//	CONNECT TARGET HTTP/1.1  (TARGET = a Route's Target, addr:port)
//	    The gateway dials TARGET through its netstack (into the workstation's
//	    tunnel) within DialTimeout; 200 and then raw bytes both ways, 403 if
//	    TARGET is not a live route's target, 502 if the dial failed.

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
