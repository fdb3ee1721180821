package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/agent"
	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/agent/sidecar"
	"github.com/bridgetun/bridgetun/tunnel"
)

// describedNames is a Registerer that records the names of every metric
// its collectors describe, series or not (a vector without values is
// invisible to Gather but still exported once it has one).
type describedNames map[string]bool

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (d describedNames) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		if m := fqName.FindStringSubmatch(desc.String()); m != nil {
			d[m[1]] = true
		}
	}
	return nil
}

func (d describedNames) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = d.Register(c)
	}
}

func (describedNames) Unregister(prometheus.Collector) bool { return true }

type noRoutes struct{}

func (noRoutes) Current() api.RouteTable { return api.RouteTable{} }

// TestGrafanaDashboard: deploy/grafana/bridgetun-gateway.json is a
// dashboard Grafana loads (panels with queries on the datasource
// variable, the variables it uses defined) and every metric its queries
// name is one the gateway and sidecar of this binary register.
func TestGrafanaDashboard(t *testing.T) {
	exported := describedNames{}
	key, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	streamLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gw, err := agent.NewGateway(agent.GatewayConfig{PrivateKey: key, Addr: api.GatewayTunnelAddr, StreamListener: streamLn, Registerer: exported})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gw.Close() })
	holders := agent.NewHolders(exported)
	icpt := agent.NewIntercepts(0, nil)
	agent.NewControl(agent.ControlConfig{Gateway: gw, GatewayKey: key, Registerer: exported, Holders: holders, Intercepts: icpt})
	agent.NewRelay(agent.RelayConfig{Intercepts: icpt, Registerer: exported, Holders: holders})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := sidecar.New(sidecar.Config{Listener: ln, Original: "127.0.0.1:1", Routes: noRoutes{}, Registerer: exported,
		Dial: func(context.Context, string) (net.Conn, error) { return nil, net.ErrClosed }}); err != nil {
		t.Fatal(err)
	}
	if !exported["bridgetun_gateway_holder_bytes_total"] || !exported["bridgetun_intercept_requests_total"] {
		t.Fatalf("recorded names lack the per-holder and sidecar series: %v", exported)
	}

	raw, err := os.ReadFile("../../deploy/grafana/bridgetun-gateway.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Schema     int    `json:"schemaVersion"`
		Templating struct {
			List []struct{ Name, Type, Query string } `json:"list"`
		} `json:"templating"`
		Panels []dashboardPanel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || dash.Schema < 30 || len(dash.Panels) == 0 {
		t.Fatalf("dashboard: title %q uid %q schemaVersion %d, %d panels: want all set", dash.Title, dash.UID, dash.Schema, len(dash.Panels))
	}
	vars := map[string]bool{"__rate_interval": true} // Grafana's own
	var varQueries []string
	for _, v := range dash.Templating.List {
		vars[v.Name] = true
		varQueries = append(varQueries, v.Query)
	}
	metricName := regexp.MustCompile(`\bbridgetun_[a-z0-9_]+`)
	varRef := regexp.MustCompile(`\$\{?([A-Za-z_]+)`)
	ids := map[int]bool{}
	check := func(where, expr string) {
		for _, m := range metricName.FindAllString(expr, -1) {
			if !exported[m] {
				t.Errorf("%s: metric %s is not exported by the gateway or the sidecar", where, m)
			}
		}
		for _, m := range varRef.FindAllStringSubmatch(expr, -1) {
			if !vars[m[1]] {
				t.Errorf("%s: variable $%s is not defined", where, m[1])
			}
		}
	}
	for _, p := range dash.Panels {
		where := "panel " + p.Title
		if ids[p.ID] || p.ID == 0 || p.Type == "" || p.Title == "" || p.GridPos.W == 0 || p.GridPos.H == 0 || len(p.Targets) == 0 {
			t.Errorf("%s: want a unique id, a type, a title, a size and queries: %+v", where, p)
		}
		ids[p.ID] = true
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("%s: datasource %q, want the ${datasource} variable", where, p.Datasource.UID)
		}
		for _, q := range p.Targets {
			if q.RefID == "" || strings.TrimSpace(q.Expr) == "" {
				t.Errorf("%s: query %+v: want a refId and an expression", where, q)
			}
			check(where, q.Expr)
		}
	}
	for _, q := range varQueries {
		check("variable query", q)
	}
	if !slices.ContainsFunc(dash.Panels, func(p dashboardPanel) bool { return strings.Contains(p.Targets[0].Expr, "by (holder") }) {
		t.Error("no panel breaks a series down by holder")
	}
}

type dashboardPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource struct{ UID string }     `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}
