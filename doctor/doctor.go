// Package doctor checks what makes a bridgetun session work or not on
// this machine — the session and its gateway, the handshake, the API
// server's route, routes other VPNs claim, the resolver path the OS really
// uses — and gives one verdict line per check, each failure with what to
// do. It only reads: it changes no route, resolver or cluster object.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/bridgetun/bridgetun/session"
)

// Verdict statuses.
const (
	OK   = "ok"
	Warn = "warn"
	Fail = "fail"
	Skip = "skip"
)

// Verdict is one check's result.
type Verdict struct {
	Check  string `json:"check"`
	Status string `json:"status"` // ok, warn, fail, skip
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"` // what to do, for warn and fail
}

func (v Verdict) String() string {
	s := fmt.Sprintf("%-4s %-14s %s", v.Status, v.Check, v.Detail)
	if v.Fix != "" {
		s += ": " + v.Fix
	}
	return s
}

// Route is one route of the OS: destination, device, routing table.
type Route struct {
	Dst   netip.Prefix
	Dev   string
	Table int
}

// Rule is one policy-routing rule: which table it sends what to.
type Rule struct {
	Priority int
	Table    int
	Src, Dst netip.Prefix // invalid = any
}

// System is what doctor asks the OS; SystemOf gives the real one.
type System struct {
	// Routes lists the routes of every routing table; errors.ErrUnsupported
	// where the OS is not inspected (the checks say so).
	Routes func() ([]Route, error)
	// Rules lists the policy-routing rules.
	Rules func() ([]Rule, error)
	// RouteTo is the device the OS sends a packet to ip through.
	RouteTo func(ip netip.Addr) (dev string, err error)
	// Resolve looks a name up the way programs on this machine do.
	Resolve func(ctx context.Context, name string) ([]string, error)
	// Nameservers are the resolvers the OS configuration names (for the
	// verdict's detail); nil = unknown.
	Nameservers func() []string
	// Dial opens a TCP connection (the API server reachability check).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// ProbeUDP sends pkt to addr in one datagram with the don't-fragment
	// bit set and returns the first reply (the MTU check); nil = not
	// inspected. A datagram the local stack refuses as too large wraps
	// errMsgSize.
	ProbeUDP func(ctx context.Context, addr string, pkt []byte) ([]byte, error)
	// InterfaceMTU is the MTU of a network interface.
	InterfaceMTU func(name string) (int, error)
}

// Inputs are what the checks look at.
type Inputs struct {
	Status    *session.Status // nil: no session answered (StatusErr says why)
	StatusErr error
	// APIServer is the kubeconfig's server URL; "" = unknown.
	APIServer string
	// ForeignName is a name outside the cluster that should resolve
	// through the usual resolver; "" = not checked.
	ForeignName string
	System      System
	Timeout     time.Duration // per network check; 0 = 3 s
}

// staleHandshake is when a handshake is too old for a live tunnel:
// WireGuard rekeys every 2 minutes while traffic flows, the client's
// keepalive makes it flow.
const staleHandshake = 3 * time.Minute

// Run runs every check, in order, and returns their verdicts.
func Run(ctx context.Context, in Inputs) []Verdict {
	if in.Timeout == 0 {
		in.Timeout = 3 * time.Second
	}
	var out []Verdict
	out = append(out, checkSession(in))
	out = append(out, checkGateway(in), checkHandshake(in))
	out = append(out, checkAPIServer(ctx, in))
	out = append(out, checkRoutes(in)...)
	out = append(out, checkMTU(ctx, in))
	out = append(out, checkClusterDNS(ctx, in), checkForeignDNS(ctx, in))
	out = append(out, checkIntercepts(in)...)
	return out
}

// Failed reports whether any verdict is a failure.
func Failed(vs []Verdict) bool {
	return slices.ContainsFunc(vs, func(v Verdict) bool { return v.Status == Fail })
}

func skipNoSession(check string) Verdict {
	return Verdict{Check: check, Status: Skip, Detail: "no session"}
}

func checkSession(in Inputs) Verdict {
	v := Verdict{Check: "session"}
	switch {
	case in.Status == nil && errors.Is(in.StatusErr, session.ErrNotRunning):
		v.Status, v.Detail, v.Fix = Fail, "no session is up", "start one with `sudo bridgetun up` (or `bridgetun up --netstack` without root)"
	case in.Status == nil:
		v.Status, v.Detail, v.Fix = Fail, fmt.Sprintf("the session did not answer: %v", in.StatusErr), "see its log, or `bridgetun down` and `sudo bridgetun up` again"
	case in.Status.State != "connected":
		v.Status, v.Detail, v.Fix = Warn, fmt.Sprintf("%s (pid %d)", in.Status.State, in.Status.PID), "wait a few seconds; if it stays so, see the session's log"
	default:
		v.Status, v.Detail = OK, fmt.Sprintf("connected (pid %d), %s mode, context %q, namespace %q", in.Status.PID, in.Status.Mode, in.Status.Context, in.Status.Namespace)
	}
	return v
}

func checkGateway(in Inputs) Verdict {
	st := in.Status
	if st == nil {
		return skipNoSession("gateway")
	}
	v := Verdict{Check: "gateway", Detail: fmt.Sprintf("%s/%s, version %s", st.GatewayNamespace, st.GatewayPod, st.GatewayVersion)}
	if st.GatewayVersion != st.ClientVersion {
		v.Status = Warn
		v.Detail += fmt.Sprintf(", this client is %s", st.ClientVersion)
		v.Fix = fmt.Sprintf("upgrade it: `bridgetun install --upgrade -n %s` (or `bridgetun up --upgrade`)", st.GatewayNamespace)
		return v
	}
	v.Status = OK
	return v
}

func checkHandshake(in Inputs) Verdict {
	st := in.Status
	if st == nil {
		return skipNoSession("transport")
	}
	v := Verdict{Check: "transport"}
	age := time.Duration(st.HandshakeAgeSec * float64(time.Second))
	switch {
	case st.LastHandshake.IsZero():
		v.Status, v.Detail = Fail, st.Transport+": no WireGuard handshake yet"
		v.Fix = "the gateway does not answer on this transport: try `--transport stream` (it rides the API server)"
	case age > staleHandshake:
		v.Status, v.Detail = Fail, fmt.Sprintf("%s: last handshake %s ago (reconnects %d)", st.Transport, age.Round(time.Second), st.Reconnects)
		v.Fix = "the tunnel is stale (network change, sleep): `bridgetun down` and `sudo bridgetun up`, or `--transport stream` if UDP is blocked"
	default:
		v.Status, v.Detail = OK, fmt.Sprintf("%s: handshake %s ago, %d bytes in, %d out", st.Transport, age.Round(time.Second), st.RxBytes, st.TxBytes)
	}
	return v
}

// sessionRoutes are the session's tunnel routes.
func sessionRoutes(st *session.Status) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range st.Routes {
		if p, err := netip.ParsePrefix(r); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

func checkAPIServer(ctx context.Context, in Inputs) Verdict {
	v := Verdict{Check: "api-server"}
	if in.APIServer == "" {
		v.Status, v.Detail = Skip, "no kubeconfig server"
		return v
	}
	u, err := url.Parse(in.APIServer)
	if err != nil || u.Host == "" {
		v.Status, v.Detail, v.Fix = Fail, fmt.Sprintf("kubeconfig server %q is not a URL", in.APIServer), "fix the cluster's server in your kubeconfig"
		return v
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "443"
	}
	addr := net.JoinHostPort(host, port)
	dctx, cancel := context.WithTimeout(ctx, in.Timeout)
	start := time.Now()
	c, err := in.System.Dial(dctx, addr)
	cancel()
	if err != nil {
		v.Status, v.Detail, v.Fix = Fail, fmt.Sprintf("%s unreachable: %v", addr, err), "check your network or VPN to the cluster; bridgetun needs the API server first"
		return v
	}
	remote, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	c.Close()
	v.Detail = fmt.Sprintf("%s reachable (%s)", addr, time.Since(start).Round(time.Millisecond))
	ip := remote.Addr().Unmap()
	if st := in.Status; st != nil && ip.IsValid() {
		for _, p := range sessionRoutes(st) {
			if p.Contains(ip) {
				v.Status = Fail
				v.Detail += fmt.Sprintf(", but its address %s is inside the tunnel's route %s", ip, p)
				v.Fix = "the tunnel would carry its own control traffic: reach the API server by an address outside the cluster's ranges"
				return v
			}
		}
		if st.TUN != "" && in.System.RouteTo != nil {
			if dev, err := in.System.RouteTo(ip); err == nil && dev == st.TUN {
				v.Status = Fail
				v.Detail += fmt.Sprintf(", but the OS routes %s through the tunnel device %s", ip, dev)
				v.Fix = "remove the route that sends the API server into " + dev
				return v
			}
		}
	}
	v.Status = OK
	return v
}

// checkRoutes finds, for each tunnel route, where the OS really sends it
// and which routes of other tables (another VPN's) claim any of it.
func checkRoutes(in Inputs) []Verdict {
	st := in.Status
	if st == nil {
		return []Verdict{skipNoSession("routes")}
	}
	if st.TUN == "" {
		return []Verdict{{Check: "routes", Status: Skip, Detail: st.Mode + " mode: no OS routes (programs use the proxies or `bridgetun run`)"}}
	}
	if in.System.Routes == nil {
		return []Verdict{{Check: "routes", Status: Skip, Detail: "routes are not inspected on this OS"}}
	}
	routes, err := in.System.Routes()
	if errors.Is(err, errors.ErrUnsupported) {
		return []Verdict{{Check: "routes", Status: Skip, Detail: "routes are not inspected on this OS"}}
	}
	if err != nil {
		return []Verdict{{Check: "routes", Status: Warn, Detail: fmt.Sprintf("list routes: %v", err)}}
	}
	var rules []Rule
	if in.System.Rules != nil {
		rules, _ = in.System.Rules()
	}
	var out []Verdict
	for _, want := range sessionRoutes(st) {
		v := Verdict{Check: "routes"}
		var dev string
		if in.System.RouteTo != nil {
			dev, err = in.System.RouteTo(want.Addr())
			if err != nil {
				dev = "(no route: " + err.Error() + ")"
			}
		}
		var others []string
		for _, r := range routes {
			if r.Dev == st.TUN || !r.Dst.Overlaps(want) || r.Dst.Bits() == 0 {
				continue
			}
			o := fmt.Sprintf("%s via %s (table %s", r.Dst, r.Dev, tableName(r.Table))
			if pri := rulesTo(rules, r.Table); len(pri) > 0 {
				o += ", rule priority " + strings.Join(pri, ",")
			}
			others = append(others, o+")")
		}
		switch {
		case dev != "" && dev != st.TUN:
			v.Status = Fail
			v.Detail = fmt.Sprintf("%s: the OS sends it through %s, not %s", want, dev, st.TUN)
			if len(others) > 0 {
				v.Detail += "; claimed by " + strings.Join(others, "; ")
			}
			v.Fix = "another VPN or route claims the cluster's range: stop it, or remove its route for this range"
		case len(others) > 0:
			v.Status = Warn
			v.Detail = fmt.Sprintf("%s through %s, but also claimed by %s", want, st.TUN, strings.Join(others, "; "))
			v.Fix = "a more specific route or a policy rule of another VPN may win for part of it: check `ip rule` and `ip route show table all`"
		default:
			v.Status, v.Detail = OK, fmt.Sprintf("%s through %s", want, st.TUN)
		}
		out = append(out, v)
	}
	return out
}

func rulesTo(rules []Rule, table int) []string {
	var out []string
	for _, r := range rules {
		if r.Table == table && table != 254 && table != 255 {
			out = append(out, fmt.Sprint(r.Priority))
		}
	}
	return out
}

func tableName(t int) string {
	switch t {
	case 254:
		return "main"
	case 255:
		return "local"
	}
	return fmt.Sprint(t)
}

func (in Inputs) resolve(ctx context.Context, name string) ([]string, time.Duration, error) {
	rctx, cancel := context.WithTimeout(ctx, in.Timeout)
	defer cancel()
	start := time.Now()
	addrs, err := in.System.Resolve(rctx, name)
	return addrs, time.Since(start), err
}

func (in Inputs) via() string {
	if in.System.Nameservers == nil {
		return ""
	}
	if ns := in.System.Nameservers(); len(ns) > 0 {
		return " via " + strings.Join(ns, ", ")
	}
	return ""
}

// checkClusterDNS resolves a cluster name the way programs here do.
func checkClusterDNS(ctx context.Context, in Inputs) Verdict {
	st := in.Status
	if st == nil {
		return skipNoSession("dns-cluster")
	}
	v := Verdict{Check: "dns-cluster"}
	if st.DNSMode == "off" || st.DNSMode == "none" {
		v.Status, v.Detail = Skip, "split DNS is "+st.DNSMode+" for this session"
		return v
	}
	name := "kubernetes.default.svc." + st.ClusterDomain
	addrs, took, err := in.resolve(ctx, name)
	if err != nil || len(addrs) == 0 {
		v.Status = Fail
		v.Detail = fmt.Sprintf("%s did not resolve%s: %v", name, in.via(), err)
		v.Fix = fmt.Sprintf("the OS does not ask bridgetun's resolver (%s): another tool may have rewritten the resolver configuration; `bridgetun down` and `sudo bridgetun up` restore it", st.DNSListen)
		return v
	}
	v.Status, v.Detail = OK, fmt.Sprintf("%s → %s in %s%s", name, strings.Join(addrs, " "), took.Round(time.Microsecond), in.via())
	if took > 500*time.Millisecond {
		v.Status, v.Fix = Warn, "slow: an unreachable nameserver may be asked first"
	}
	return v
}

// checkForeignDNS resolves a name outside the cluster: it must still go
// to the usual resolver.
func checkForeignDNS(ctx context.Context, in Inputs) Verdict {
	v := Verdict{Check: "dns-foreign"}
	if in.ForeignName == "" {
		v.Status, v.Detail = Skip, "no --foreign-name"
		return v
	}
	addrs, took, err := in.resolve(ctx, in.ForeignName)
	if err != nil || len(addrs) == 0 {
		v.Status = Fail
		v.Detail = fmt.Sprintf("%s did not resolve%s: %v", in.ForeignName, in.via(), err)
		v.Fix = "names outside the cluster must reach your usual resolver: check the session's `status --diagnostics` upstreams"
		return v
	}
	v.Status, v.Detail = OK, fmt.Sprintf("%s → %s in %s%s", in.ForeignName, strings.Join(addrs, " "), took.Round(time.Microsecond), in.via())
	return v
}

// checkIntercepts reports each intercept's real state.
func checkIntercepts(in Inputs) []Verdict {
	st := in.Status
	if st == nil || len(st.Intercepts) == 0 {
		return nil
	}
	var out []Verdict
	for _, it := range st.Intercepts {
		v := Verdict{Check: "intercept", Detail: fmt.Sprintf("%s (%s) → 127.0.0.1:%d: %s", it.Service, it.Workload, it.LocalPort, it.State)}
		switch {
		case it.State == session.InterceptActive && it.SidecarsKnown && len(it.Sidecars) == 0:
			v.Status, v.Detail = Warn, v.Detail+": no sidecar of "+it.Workload+" polls the gateway's relay"
			v.Fix = fmt.Sprintf("its pods may still be rolling out; if it stays so: `kubectl -n %s get pods` (does each run the bridgetun-sidecar container?) and that container's log (can it reach the bridgetun-relay Service?)", it.Namespace)
		case it.State == session.InterceptActive:
			v.Status = OK
			if it.SidecarsKnown {
				v.Detail += fmt.Sprintf("; sidecars polling the gateway: %s", strings.Join(it.Sidecars, ", "))
			}
		case it.State == session.InterceptLost:
			v.Status, v.Detail, v.Fix = Fail, v.Detail+": "+it.StateReason, "start it again (`bridgetun intercept "+it.Service+" …`)"
		default:
			v.Status, v.Detail, v.Fix = Warn, v.Detail+": "+it.StateReason, "it re-attaches by itself when the gateway answers"
		}
		out = append(out, v)
	}
	return out
}
