package devflow

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bridgetun/bridgetun/session"
)

func TestLoadProjectConfig(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, wantErr string
		want                ProjectConfig
	}{
		{name: "missing file is empty", yaml: "-"},
		{name: "full", yaml: `version: 1
intercept: {service: api, port: "8080:http", isolate: true, routeAs: alice, envFile: .env, mount: ./vol}
env: [{name: LOG_LEVEL, value: debug}]
volumes: [{path: /var/lib/data, local: ./data}]
`, want: ProjectConfig{
			Version:   1,
			Intercept: ProjectIntercept{Service: "api", Port: "8080:http", Isolate: true, RouteAs: "alice", EnvFile: ".env", Mount: "./vol"},
			Env:       []EnvVar{{Name: "LOG_LEVEL", Value: "debug"}},
			Volumes:   []VolumeCopy{{Path: "/var/lib/data", Local: "./data"}},
		}},
		{name: "durations", yaml: "intercept: {wait: 90s, grace: 15m}\n",
			want: ProjectConfig{Intercept: ProjectIntercept{Wait: Duration(90 * time.Second), Grace: Duration(15 * time.Minute)}}},
		{name: "bad duration", yaml: "intercept: {grace: soon}\n", wantErr: `duration "soon": want e.g. 90s or 15m`},
		{name: "unknown field", yaml: "intercept: {servce: api}\n", wantErr: `unknown field "servce"`},
		{name: "bad version", yaml: "version: 2\n", wantErr: "version 2"},
		{name: "relative volume path", yaml: "volumes: [{path: data}]\n", wantErr: "want an absolute path"},
		{name: "env without name", yaml: "env: [{value: x}]\n", wantErr: "env[0]: name is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), ProjectConfigFile)
			if tc.yaml != "-" {
				if err := os.WriteFile(p, []byte(tc.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := LoadProjectConfig(p)
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			default:
				if d := cmp.Diff(tc.want, got); d != "" {
					t.Errorf("config (-want +got):\n%s", d)
				}
			}
		})
	}
}

func TestMergeIntercept(t *testing.T) {
	file := ProjectConfig{
		Intercept: ProjectIntercept{Service: "api", Port: "8080:http", Isolate: true, RouteAs: "alice", EnvFile: ".env", Mount: "./vol"},
		Env:       []EnvVar{{Name: "LOG_LEVEL", Value: "debug"}},
		Volumes:   []VolumeCopy{{Path: "/var/lib/data"}},
	}
	isolateOnly := ProjectConfig{Intercept: ProjectIntercept{Service: "api", Port: "8080", Isolate: true}}
	for _, tc := range []struct {
		name     string
		file     ProjectConfig
		flags    InterceptFlags
		wantSpec session.InterceptSpec
		wantRepl Replication
		wantWait time.Duration
		wantErr  string
	}{
		{
			name:     "file fills every gap",
			file:     file,
			wantSpec: session.InterceptSpec{Service: "api", Port: "http", LocalPort: 8080, RouteAs: "alice"},
			wantRepl: Replication{EnvFile: ".env", Mount: "./vol", Env: file.Env, Volumes: file.Volumes},
		},
		{
			name: "flags override the file",
			file: file,
			flags: InterceptFlags{
				Service: "web", Port: new("9090"), RouteAs: new("bob"), EnvFile: new("web.env"), Mount: new("/m"),
				Container: "srv", URLAddr: "127.0.0.1:9999", NoMount: true,
			},
			wantSpec: session.InterceptSpec{Service: "web", LocalPort: 9090, RouteAs: "bob", URLAddr: "127.0.0.1:9999"},
			wantRepl: Replication{Container: "srv", EnvFile: "web.env", Mount: "/m", NoMount: true, Env: file.Env, Volumes: file.Volumes},
		},
		{
			name:     "flags given empty still win",
			file:     file,
			flags:    InterceptFlags{RouteAs: new(""), EnvFile: new(""), Mount: new("")},
			wantSpec: session.InterceptSpec{Service: "api", Port: "http", LocalPort: 8080},
			wantRepl: Replication{Env: file.Env, Volumes: file.Volumes},
		},
		{
			name:     "--isolate=false beats the file's isolate",
			file:     isolateOnly,
			flags:    InterceptFlags{Isolate: new(false)},
			wantSpec: session.InterceptSpec{Service: "api", LocalPort: 8080},
		},
		{
			name:     "--isolate=false keeps the file's routeAs, which isolates",
			file:     file,
			flags:    InterceptFlags{Isolate: new(false)},
			wantSpec: session.InterceptSpec{Service: "api", Port: "http", LocalPort: 8080, RouteAs: "alice"},
			wantRepl: Replication{EnvFile: ".env", Mount: "./vol", Env: file.Env, Volumes: file.Volumes},
		},
		{
			name:     "file isolate without routeAs derives one",
			file:     isolateOnly,
			wantSpec: session.InterceptSpec{Service: "api", LocalPort: 8080, RouteAs: DefaultRouteAs()},
		},
		{
			name:     "--isolate derives a route-as",
			flags:    InterceptFlags{Service: "api", Port: new("8080"), Isolate: new(true)},
			wantSpec: session.InterceptSpec{Service: "api", LocalPort: 8080, RouteAs: DefaultRouteAs()},
		},
		{
			name:     "no file, no isolation",
			flags:    InterceptFlags{Service: "api", Port: new("8080:80")},
			wantSpec: session.InterceptSpec{Service: "api", Port: "80", LocalPort: 8080},
		},
		{
			name:     "the file's grace and wait",
			file:     ProjectConfig{Intercept: ProjectIntercept{Service: "api", Port: "8080", Grace: Duration(15 * time.Minute), Wait: Duration(2 * time.Minute)}},
			wantSpec: session.InterceptSpec{Service: "api", LocalPort: 8080, Grace: 15 * time.Minute},
			wantWait: 2 * time.Minute,
		},
		{
			name:     "--grace and --wait beat the file",
			file:     ProjectConfig{Intercept: ProjectIntercept{Service: "api", Port: "8080", Grace: Duration(15 * time.Minute), Wait: Duration(2 * time.Minute)}},
			flags:    InterceptFlags{Grace: new(time.Hour), Wait: new(10 * time.Second)},
			wantSpec: session.InterceptSpec{Service: "api", LocalPort: 8080, Grace: time.Hour},
			wantWait: 10 * time.Second,
		},
		{name: "negative grace", flags: InterceptFlags{Service: "api", Port: new("8080"), Grace: new(-time.Minute)}, wantErr: "--grace -1m0s: want 1s to 24h0m0s"},
		{name: "grace past the gateway's cap", flags: InterceptFlags{Service: "api", Port: new("8080"), Grace: new(48 * time.Hour)}, wantErr: "--grace 48h0m0s: want 1s to 24h0m0s"},
		{name: "negative wait", flags: InterceptFlags{Service: "api", Port: new("8080"), Wait: new(-time.Second)}, wantErr: "--wait -1s: want a positive duration"},
		{name: "no service", flags: InterceptFlags{Port: new("8080")}, wantErr: "name the Service to intercept"},
		{name: "no port", flags: InterceptFlags{Service: "api"}, wantErr: "--port LOCAL[:REMOTE] is required"},
		{name: "--port '' beats the file's", file: file, flags: InterceptFlags{Port: new("")}, wantErr: "--port LOCAL[:REMOTE] is required"},
		{name: "bad port", flags: InterceptFlags{Service: "api", Port: new("http")}, wantErr: `--port "http": want LOCAL[:REMOTE]`},
		{name: "bad route-as", flags: InterceptFlags{Service: "api", Port: new("8080"), RouteAs: new("a b")}, wantErr: `--route-as "a b": use letters`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MergeIntercept(tc.file, tc.flags)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.wantSpec, got.Spec); d != "" {
				t.Errorf("spec (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.wantRepl, got.Replicate); d != "" {
				t.Errorf("replication (-want +got):\n%s", d)
			}
			if got.Wait != tc.wantWait {
				t.Errorf("wait: got %v, want %v", got.Wait, tc.wantWait)
			}
		})
	}
}

func TestDefaultRouteAs(t *testing.T) {
	got := DefaultRouteAs()
	if !routeAsRE.MatchString(got) {
		t.Errorf("got %q, want a valid route-as value", got)
	}
	if got != DefaultRouteAs() {
		t.Errorf("got %q, then %q: want the same value every time", got, DefaultRouteAs())
	}
}

func TestDotenv(t *testing.T) {
	got := string(dotenv([]EnvVar{{"A", "plain"}, {"B", `q"uote $HOME \ back` + " `id`"}, {"C", "two\nlines"}, {"D;id", "x"}}))
	want := "A=\"plain\"\nB=\"q\\\"uote \\$HOME \\\\ back \\`id\\`\"\nC=\"two\nlines\"\n# \"D;id\" left out: not a shell variable name\n"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestDotenvShell sources the file with a real POSIX shell: every value reads
// back exactly and nothing in a value or a name runs.
func TestDotenvShell(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatalf("sh: %v", err) // POSIX systems have one; this test is the proof
	}
	dir := t.TempDir()
	pwned := filepath.Join(dir, "pwned")
	values := []string{
		"plain", "", "`touch " + pwned + "`", "$(touch " + pwned + ")", "$HOME ${HOME} $1 $$ $? $-",
		`"double" 'single' it's`, `back\slash \n \\ \" \$`, `trail\`, "two\nlines\n", "cr\r\nlf", "\ttab",
		"ünï 😀 ☃", "a=b=c", "#hash", "; touch " + pwned, "\\\n",
	}
	var vars []EnvVar
	for i, v := range values {
		vars = append(vars, EnvVar{fmt.Sprintf("K%d", i), v})
	}
	vars = append(vars, EnvVar{"X=$(touch " + pwned + ")", "v"}, EnvVar{"touch " + pwned, "v"})
	file := filepath.Join(dir, ".env")
	if err := os.WriteFile(file, dotenv(vars), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, v := range values {
		// A trailing character keeps $(...) from dropping trailing newlines.
		out, err := exec.Command(sh, "-c", fmt.Sprintf(`set -a; . "$1"; printf '%%s|' "$K%d"`, i), "sh", file).CombinedOutput()
		if err != nil {
			t.Fatalf("source %q: %v: %s", v, err, out)
		}
		if got := strings.TrimSuffix(string(out), "|"); got != v {
			t.Errorf("K%d: got %q, want %q", i, got, v)
		}
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Errorf("sourcing the env file ran a command from a value or a name: %s exists", pwned)
	}
}

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in     string
		local  int
		remote string
		ok     bool
	}{
		{"8080", 8080, "", true}, {"8080:http", 8080, "http", true}, {"8080:80", 8080, "80", true},
		{"x", 0, "", false}, {"0", 0, "", false}, {"70000:80", 0, "", false},
	} {
		l, r, err := parsePort(tc.in)
		if (err == nil) != tc.ok || l != tc.local || r != tc.remote {
			t.Errorf("parsePort(%q) = %d, %q, %v; want %d, %q, ok=%v", tc.in, l, r, err, tc.local, tc.remote, tc.ok)
		}
	}
}
