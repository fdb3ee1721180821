package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/internal/netlimit"
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
	Transport        string          `json:"transport"`                    // the path in use: udp or stream
	TransportMode    string          `json:"transport_mode,omitempty"`     // --transport: auto, udp or stream
	TransportSwitch  int64           `json:"transport_switches,omitempty"` // auto: moves between udp and stream
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
	ProxyAuth        *ProxyAuth      `json:"proxy_auth,omitempty"` // only in the socket API's answer, for run's proxy URLs; status never prints it
}

// apiHandlers are what the session socket serves.
type apiHandlers struct {
	status    func() Status
	down      func()
	intercept func(context.Context, InterceptSpec, func(InterceptEvent)) (InterceptInfo, error)
	leave     func(service string) (string, error)
	// startTrace and getTrace open and read header-propagation traces at
	// the gateway (trace.go); nil = not served.
	startTrace func(context.Context, api.TraceStartRequest) (api.Trace, error)
	getTrace   func(context.Context, string) (api.Trace, error)
}

// apiServer is the session's owner-only Unix socket: status, down,
// intercept and leave as small HTTP/JSON calls.
type apiServer struct {
	path   string
	marker string // root-held session's owner record; "" = none
	owner  *invoker.User
	ln     net.Listener
	srv    *http.Server
}

// listenAPI binds the socket (a stale one is replaced: a live session was
// ruled out before) with mode 0600. Socket and directory are made as the
// paths' owner (under sudo the invoking user, whose later commands need no
// sudo); connections are accepted from that user and root only. A root-held
// session also leaves its marker (see writeMarker).
func listenAPI(p Paths, h apiHandlers) (*apiServer, error) {
	path, u := p.Socket, p.owner()
	if err := u.PrivateDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("socket dir: %w (the runtime dir must be one %s can enter: check its owner and mode, or point XDG_RUNTIME_DIR elsewhere)", err, u.Name)
	}
	var ln *net.UnixListener
	err := u.Do(func() error {
		_ = os.Remove(path)
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			return fmt.Errorf("listen %s: %w", path, err)
		}
		l.SetUnlinkOnClose(false) // Close removes it, as the owner
		if err := os.Chmod(path, 0o600); err != nil {
			l.Close()
			_ = os.Remove(path)
			return fmt.Errorf("chmod %s: %w", path, err)
		}
		ln = l
		return nil
	})
	if err != nil {
		return nil, err
	}
	a := &apiServer{path: path, owner: u, ln: &peerListener{Listener: netlimit.Listener(ln, netlimit.MaxSocket, nil), owner: u.UID, ownerName: u.Name},
		srv: &http.Server{Handler: peerCheck(apiMux(h)), ConnContext: peerContext, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}}
	if err := writeMarker(p); err != nil {
		a.Close()
		return nil, err
	}
	a.marker = p.Marker
	return a, nil
}

// Run serves until ctx ends, then closes the server and removes the socket;
// it returns after the serve loop has exited.
func (a *apiServer) Run(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- a.srv.Serve(a.ln) }()
	<-ctx.Done()
	err := a.Close()
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) && serr != nil {
		err = errors.Join(err, serr)
	}
	return err
}

// Close stops serving and removes the socket (idempotent).
func (a *apiServer) Close() error {
	err := a.srv.Close()
	if a.ln != nil {
		_ = a.ln.Close() // Serve may not have started
	}
	removeMarker(a.marker)
	if rerr := a.owner.Do(func() error { return os.Remove(a.path) }); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

func apiMux(h apiHandlers) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(h.status())
	})
	mux.HandleFunc("POST /intercept", func(w http.ResponseWriter, r *http.Request) {
		var spec InterceptSpec
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&spec); err != nil {
			http.Error(w, "intercept: bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		// The answer streams: the steps as they happen, then the result
		// or the error (interceptLine).
		out := newInterceptStream(w)
		info, err := h.intercept(r.Context(), spec, func(e InterceptEvent) { out.send(interceptLine{Event: &e}) })
		if err != nil {
			out.send(interceptLine{Error: err.Error()})
			return
		}
		out.send(interceptLine{Info: &info})
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
		h.down() // only cancels: the session shuts down in its own goroutine
	})
	traceMux(mux, h.startTrace, h.getTrace)
	return mux
}
