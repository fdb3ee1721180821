package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"time"
)

// RouteAsHeader is the header bridgetun's isolated intercepts route on; every hop propagates it.
const RouteAsHeader = "Kubernetes-Route-As"

// Response is what `testapp http` answers (and what tests decode).
type Response struct {
	Service    string              `json:"service"`
	Instance   string              `json:"instance"`
	PodIP      string              `json:"pod_ip,omitempty"`
	Namespace  string              `json:"namespace,omitempty"`
	UID        int                 `json:"uid"` // the serving process's uid (an intercept's CMD runs as the developer)
	Path       string              `json:"path"`
	Proto      string              `json:"proto"` // HTTP/1.1 or HTTP/2.0 (h2c prior knowledge)
	RouteAs    string              `json:"route_as,omitempty"`
	Headers    map[string][]string `json:"headers"`
	Config     *string             `json:"config,omitempty"`
	SecretEnv  map[string]bool     `json:"secret_env,omitempty"`
	Env        map[string]string   `json:"env,omitempty"`
	Downstream json.RawMessage     `json:"downstream,omitempty"`
	// DownstreamServedBy is the downstream answer's Bridgetun-Served-By
	// header (set by an isolating intercept sidecar): local or cluster.
	DownstreamServedBy string `json:"downstream_served_by,omitempty"`
	Error              string `json:"error,omitempty"`
}

func runHTTP(args []string) error {
	fs := flag.NewFlagSet("http", flag.ContinueOnError)
	listen := fs.String("listen", envOr("LISTEN", ":8080"), "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log.Printf("testapp http %s on %s (downstream %q)", envOr("SERVICE_NAME", "testapp"), *listen, os.Getenv("DOWNSTREAM_URL"))
	// HTTP/1.1 and h2c (HTTP/2 with prior knowledge, as gRPC speaks it).
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Addr: *listen, Protocols: protos, Handler: logRequests(newHandler(configFromEnv(), &http.Client{
		Timeout: 10 * time.Second,
		// A new connection per call, so kube-proxy spreads the calls over
		// every replica (a kept-alive connection would pin one).
		Transport: &http.Transport{DisableKeepAlives: true},
	}))}
	return srv.ListenAndServe()
}

// config is what an instance reports and calls; configFromEnv reads it from the pod's environment.
type config struct {
	Service, Instance, PodIP, Namespace string
	Downstream                          string   // URL called per request ("" = none)
	DropRouteAs                         bool     // call Downstream without the route-as header (DROP_ROUTE_AS=1: a service that does not propagate it)
	ConfigFile                          string   // file whose contents are reported ("" = none)
	SecretEnvNames                      []string // env vars reported as present/absent only
	ReportEnv                           []string // env vars reported with their values
}

func configFromEnv() config {
	return config{
		Service: envOr("SERVICE_NAME", "testapp"), Instance: envOr("POD_NAME", hostname()),
		PodIP: os.Getenv("POD_IP"), Namespace: os.Getenv("POD_NAMESPACE"),
		Downstream: os.Getenv("DOWNSTREAM_URL"), DropRouteAs: os.Getenv("DROP_ROUTE_AS") == "1", ConfigFile: os.Getenv("CONFIG_FILE"),
		SecretEnvNames: list(os.Getenv("SECRET_ENV_NAMES")), ReportEnv: list(os.Getenv("REPORT_ENV")),
	}
}

// newHandler serves /healthz and the echo answer at every other path.
func newHandler(cfg config, client *http.Client) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		resp := Response{
			Service:   cfg.Service,
			Instance:  cfg.Instance,
			PodIP:     cfg.PodIP,
			Namespace: cfg.Namespace,
			UID:       os.Getuid(),
			Path:      r.URL.Path,
			Proto:     r.Proto,
			RouteAs:   r.Header.Get(RouteAsHeader),
			Headers:   r.Header,
		}
		if p := cfg.ConfigFile; p != "" {
			b, err := os.ReadFile(p)
			s := string(b)
			if err != nil {
				s = "error: " + err.Error()
			}
			resp.Config = &s
		}
		for _, n := range cfg.SecretEnvNames {
			if resp.SecretEnv == nil {
				resp.SecretEnv = map[string]bool{}
			}
			_, resp.SecretEnv[n] = os.LookupEnv(n)
		}
		for _, n := range cfg.ReportEnv {
			if resp.Env == nil {
				resp.Env = map[string]string{}
			}
			resp.Env[n] = os.Getenv(n)
		}
		if d := cfg.Downstream; d != "" {
			routeAs := r.Header.Get(RouteAsHeader)
			if cfg.DropRouteAs {
				routeAs = ""
			}
			body, servedBy, err := callDownstream(r.Context(), client, d, routeAs)
			if err != nil {
				resp.Error = fmt.Sprintf("downstream %s: %v", d, err)
			} else {
				resp.Downstream, resp.DownstreamServedBy = body, servedBy
			}
		}
		w.Header().Set("Content-Type", "application/json")
		if resp.Error != "" {
			w.WriteHeader(http.StatusBadGateway)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(resp)
	})
	return mux
}

func callDownstream(ctx context.Context, c *http.Client, url, routeAs string) (json.RawMessage, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, "", err
	}
	if routeAs != "" {
		req.Header.Set(RouteAsHeader, routeAs)
	}
	res, err := c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer res.Body.Close()
	servedBy := res.Header.Get("Bridgetun-Served-By")
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return nil, servedBy, err
	}
	if !json.Valid(b) {
		b, _ = json.Marshal(string(b))
	}
	if res.StatusCode/100 != 2 {
		return b, servedBy, fmt.Errorf("status %s", res.Status)
	}
	return b, servedBy, nil
}

func logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			log.Printf("%s %s from %s route-as=%q", r.Method, r.URL.Path, r.RemoteAddr, r.Header.Get(RouteAsHeader))
		}
		h.ServeHTTP(w, r)
	})
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func list(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
