package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// TestChainPropagatesRouteAs: a two-hop chain (api -> stats) answers with both hops and the route-as header
// reaches the last one; config file and secret env flags are reported.
func TestChainPropagatesRouteAs(t *testing.T) {
	stats := httptest.NewServer(newHandler(config{Service: "stats", Instance: "stats-1"}, http.DefaultClient))
	defer stats.Close()
	file := filepath.Join(t.TempDir(), "config.txt")
	if err := os.WriteFile(file, []byte("k=v\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TOKEN", "x")
	api := httptest.NewServer(newHandler(config{
		Service: "api", Instance: "api-0", Downstream: stats.URL + "/", ConfigFile: file,
		SecretEnvNames: []string{"TOKEN", "MISSING"},
	}, http.DefaultClient))
	defer api.Close()

	req, _ := http.NewRequest(http.MethodGet, api.URL+"/hello", nil)
	req.Header.Set(RouteAsHeader, "alice")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var got struct {
		Response
		Downstream *Response `json:"downstream"`
	}
	if err := json.NewDecoder(res.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Service != "api" || got.Instance != "api-0" || got.RouteAs != "alice" || got.Path != "/hello" || got.UID != os.Getuid() {
		t.Errorf("api hop: got %+v", got.Response)
	}
	if got.Config == nil || *got.Config != "k=v\n" {
		t.Errorf("config: got %v, want k=v", got.Config)
	}
	if !got.SecretEnv["TOKEN"] || got.SecretEnv["MISSING"] {
		t.Errorf("secret_env: got %v, want TOKEN true, MISSING false", got.SecretEnv)
	}
	if got.Downstream == nil || got.Downstream.Service != "stats" || got.Downstream.Instance != "stats-1" || got.Downstream.RouteAs != "alice" {
		t.Errorf("downstream hop: got %+v, want route_as alice", got.Downstream)
	}
}
