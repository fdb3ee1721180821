package devflow

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// FuzzProjectConfig parses arbitrary bridgetun.yaml files. Invariants: a
// file either loads or fails with an error naming the file; a loaded
// config obeys the checks (version 0 or 1, env names set, absolute volume
// paths) and re-encodes to YAML that loads to the same config; merging it
// with no flags either fails or gives a spec with a valid port, route-as
// and grace.
func FuzzProjectConfig(f *testing.F) {
	testkit.Seeds(f,
		[]byte("version: 1\nintercept:\n  service: api\n  port: \"8080:http\"\n  isolate: true\n  routeAs: alice\n  envFile: .env\n  mount: ./.bridgetun/volumes\n  wait: 2m\n  grace: 30m\nenv:\n  - {name: LOG_LEVEL, value: debug}\nvolumes:\n  - {path: /var/lib/data, local: ./data}\n"),
		[]byte("intercept:\n  service: web\n  port: 3000\n  grace: 90\n"),
		[]byte("intercept: {service: web, port: '3000', wait: 1.5}\n"),
		[]byte("{\"version\": 1, \"intercept\": {\"service\": \"api\", \"port\": \"8080\"}}"),
		[]byte("version: 2\n"),
		[]byte("intercept:\n  service: api\n  prot: 8080\n"), // unknown field
		[]byte("intercept:\n  wait: soon\n"),
		[]byte("intercept:\n  grace: -5m\n  service: a\n  port: '1'\n"),
		[]byte("intercept:\n  grace: 48h\n  service: a\n  port: '1'\n"),
		[]byte("intercept:\n  routeAs: \"al ice\"\n  service: a\n  port: '1'\n"),
		[]byte("intercept:\n  port: '0:http'\n  service: a\n"),
		[]byte("env:\n  - {value: x}\n"),
		[]byte("env:\n  - {name: \"A`rm -rf`\", value: \"$(id)\"}\n"),
		[]byte("volumes:\n  - {path: relative/dir}\n"),
		[]byte("a: &a [*a, *a]\nb: *a\n"),
		[]byte("version: 1\nversion: 1\n"),
		[]byte("\t- not yaml"),
		[]byte(""),
	)
	f.Fuzz(func(t *testing.T, in []byte) {
		path := filepath.Join(t.TempDir(), ProjectConfigFile)
		if err := os.WriteFile(path, in, 0o600); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		pc, err := LoadProjectConfig(path)
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("loading %d bytes took %s", len(in), d)
		}
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if pc.Version != 0 && pc.Version != 1 {
			t.Fatalf("loaded version %d", pc.Version)
		}
		for _, e := range pc.Env {
			if e.Name == "" {
				t.Fatalf("loaded an env entry without a name: %+v", pc.Env)
			}
		}
		for _, v := range pc.Volumes {
			if !strings.HasPrefix(v.Path, "/") {
				t.Fatalf("loaded a relative volume path %q", v.Path)
			}
		}
		// Re-encode (durations as Go writes them) and load again.
		out, err := yaml.Marshal(reencoded(pc))
		if err != nil {
			t.Fatalf("re-encode %+v: %v", pc, err)
		}
		if err := os.WriteFile(path, out, 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := LoadProjectConfig(path)
		if err != nil {
			t.Fatalf("re-encoded config %q does not load: %v", out, err)
		}
		if diff := cmp.Diff(pc, again); diff != "" {
			t.Fatalf("config changed through a re-encode (-first +again):\n%s\nre-encoded:\n%s", diff, out)
		}

		ic, err := MergeIntercept(pc, InterceptFlags{})
		if err != nil {
			return
		}
		s := ic.Spec
		if s.Service == "" || s.LocalPort < 1 || s.LocalPort > 65535 {
			t.Fatalf("merged spec %+v: want a Service and a local port in 1-65535", s)
		}
		if s.RouteAs != "" && !routeAsRE.MatchString(s.RouteAs) {
			t.Fatalf("merged route-as %q is not a header-safe value", s.RouteAs)
		}
		if s.Grace < 0 || s.Grace > MaxGrace || ic.Wait < 0 {
			t.Fatalf("merged grace %s, wait %s: out of range", s.Grace, ic.Wait)
		}
	})
}

// reencoded is pc as a bridgetun.yaml author would write it: the same
// fields, durations as strings such as "15m0s".
func reencoded(pc ProjectConfig) map[string]any {
	i := pc.Intercept
	return map[string]any{
		"version": pc.Version,
		"intercept": map[string]any{
			"service": i.Service, "port": i.Port, "isolate": i.Isolate, "routeAs": i.RouteAs,
			"envFile": i.EnvFile, "mount": i.Mount,
			"wait": time.Duration(i.Wait).String(), "grace": time.Duration(i.Grace).String(),
		},
		"env":     pc.Env,
		"volumes": pc.Volumes,
	}
}
