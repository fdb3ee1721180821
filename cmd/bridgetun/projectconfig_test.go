package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadProjectConfig(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, wantErr string
		check               func(t *testing.T, pc projectConfig)
	}{
		{name: "missing file is empty", yaml: "-", check: func(t *testing.T, pc projectConfig) {
			if pc.Intercept.Service != "" || len(pc.Env) != 0 {
				t.Errorf("got %+v, want empty", pc)
			}
		}},
		{name: "full", yaml: `version: 1
intercept: {service: api, port: "8080:http", isolate: true, routeAs: alice, envFile: .env, mount: ./vol}
env: [{name: LOG_LEVEL, value: debug}]
volumes: [{path: /var/lib/data, local: ./data}]
`, check: func(t *testing.T, pc projectConfig) {
			if pc.Intercept.Service != "api" || pc.Intercept.Port != "8080:http" || !pc.Intercept.Isolate || pc.Intercept.RouteAs != "alice" {
				t.Errorf("intercept: got %+v", pc.Intercept)
			}
			if len(pc.Env) != 1 || pc.Env[0].Name != "LOG_LEVEL" || pc.Env[0].Value != "debug" {
				t.Errorf("env: got %+v", pc.Env)
			}
			if len(pc.Volumes) != 1 || pc.Volumes[0].Path != "/var/lib/data" {
				t.Errorf("volumes: got %+v", pc.Volumes)
			}
		}},
		{name: "unknown field", yaml: "intercept: {servce: api}\n", wantErr: `unknown field "servce"`},
		{name: "bad version", yaml: "version: 2\n", wantErr: "version 2"},
		{name: "relative volume path", yaml: "volumes: [{path: data}]\n", wantErr: "want an absolute path"},
		{name: "env without name", yaml: "env: [{value: x}]\n", wantErr: "env[0]: name is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "bridgetun.yaml")
			if tc.yaml != "-" {
				if err := os.WriteFile(p, []byte(tc.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			pc, err := loadProjectConfig(p)
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			default:
				tc.check(t, pc)
			}
		})
	}
}

func TestDotenv(t *testing.T) {
	got := string(dotenv([][2]string{{"A", "plain"}, {"B", `q"uote $HOME \ back`}, {"C", "two\nlines"}}))
	want := "A=\"plain\"\nB=\"q\\\"uote \\$HOME \\\\ back\"\nC=\"two\\nlines\"\n"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParseInterceptPort(t *testing.T) {
	for _, tc := range []struct {
		in     string
		local  int
		remote string
		ok     bool
	}{
		{"8080", 8080, "", true}, {"8080:http", 8080, "http", true}, {"8080:80", 8080, "80", true},
		{"x", 0, "", false}, {"0", 0, "", false}, {"70000:80", 0, "", false},
	} {
		l, r, err := parseInterceptPort(tc.in)
		if (err == nil) != tc.ok || l != tc.local || r != tc.remote {
			t.Errorf("parseInterceptPort(%q) = %d, %q, %v; want %d, %q, ok=%v", tc.in, l, r, err, tc.local, tc.remote, tc.ok)
		}
	}
}
