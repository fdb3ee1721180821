package vscode

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// workspace makes a workspace directory holding files (name → content).
func workspace(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func read(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// golden compares got with testdata/golden/name (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", name, diff)
	}
}

// writeTwice runs Write and checks that a second run changes nothing.
func writeTwice(t *testing.T, cfg Config) []Change {
	t.Helper()
	first, err := Write(cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, cfg.Dir)
	second, err := Write(cfg)
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	for _, c := range second {
		if c.Written {
			t.Errorf("second run wrote %s again", c.Path)
		}
	}
	if diff := cmp.Diff(before, snapshot(t, cfg.Dir)); diff != "" {
		t.Errorf("second run changed the workspace (-first +second):\n%s", diff)
	}
	return first
}

// snapshot is every file under dir with its content and mode.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		m[strings.TrimPrefix(p, dir)] = fmt.Sprintf("%v %s", fi.Mode(), b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestEmptyWorkspace: a Go workspace without .vscode gets both files,
// valid for VS Code, the env directory kept out of git and an empty
// private env file; a second run writes nothing.
func TestEmptyWorkspace(t *testing.T) {
	dir := workspace(t, map[string]string{"go.mod": "module example.com/api\n"})
	changes := writeTwice(t, Config{Service: "api", Port: "8080", Dir: dir})
	want := []Change{{filepath.Join(dir, ".vscode/tasks.json"), true}, {filepath.Join(dir, ".vscode/launch.json"), true}}
	if diff := cmp.Diff(want, changes); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	tasks, launch := read(t, dir, ".vscode/tasks.json"), read(t, dir, ".vscode/launch.json")
	checkTasks(t, []byte(tasks))
	checkLaunch(t, []byte(launch))
	golden(t, "go/tasks.json", tasks)
	golden(t, "go/launch.json", launch)
	if got := read(t, dir, ".vscode/bridgetun/.gitignore"); !strings.Contains(got, "\n*\n") {
		t.Errorf(".gitignore = %q, want it to ignore everything", got)
	}
	fi, err := os.Stat(filepath.Join(dir, ".vscode/bridgetun/api.env"))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 0 {
		t.Errorf("env file: %v, %v; want an empty file 0600", fi, err)
	}
}

// userTasks is a tasks.json as people write it: comments, trailing
// commas, their own tasks, and a bridgetun task from an earlier run with
// another port.
const userTasks = `// Build and test tasks of the team (keep this comment)
{
	"version": "2.0.0",
	"tasks": [
		// the usual build
		{
			"label": "build",
			"type": "shell",
			"command": "go build ./...", // no -race here
			"group": "build",
		},
		/* set up by bridgetun a while ago */
		{
			"label": "bridgetun: intercept api",
			"type": "process",
			"command": "bridgetun",
			"args": ["intercept", "api", "--port", "9090"],
		},
		{
			"label": "test",
			"type": "shell",
			"command": "go test ./...",
		},
	],
}
`

const userLaunch = `{
    // Use IntelliSense to learn about possible attributes.
    "version": "0.2.0",
    "configurations": [
        {
            "name": "Launch worker",
            "type": "go",
            "request": "launch",
            "program": "${workspaceFolder}/cmd/worker"
        }
    ]
}
`

// TestExistingFiles: the user's entries, comments and trailing commas
// stay byte for byte; the stale bridgetun task is replaced in place (the
// comment before it kept); the leave task and the launch configuration
// are added; the result is valid and a second run is a no-op.
func TestExistingFiles(t *testing.T) {
	dir := workspace(t, map[string]string{".vscode/tasks.json": userTasks, ".vscode/launch.json": userLaunch, "go.mod": "module x\n"})
	writeTwice(t, Config{Service: "api", Port: "8080:http", Dir: dir})
	tasks, launch := read(t, dir, ".vscode/tasks.json"), read(t, dir, ".vscode/launch.json")
	checkTasks(t, []byte(tasks))
	checkLaunch(t, []byte(launch))
	for _, keep := range []string{
		"// Build and test tasks of the team (keep this comment)\n{\n\t\"version\": \"2.0.0\",\n\t\"tasks\": [\n\t\t// the usual build\n",
		"\t\t{\n\t\t\t\"label\": \"build\",\n\t\t\t\"type\": \"shell\",\n\t\t\t\"command\": \"go build ./...\", // no -race here\n\t\t\t\"group\": \"build\",\n\t\t},\n\t\t/* set up by bridgetun a while ago */\n\t\t{\n\t\t\t\"label\": \"bridgetun: intercept api\",",
		"\t\t{\n\t\t\t\"label\": \"test\",\n\t\t\t\"type\": \"shell\",\n\t\t\t\"command\": \"go test ./...\",\n\t\t},\n",
	} {
		if !strings.Contains(tasks, keep) {
			t.Errorf("tasks.json lost\n%s\nfrom the user's file; got\n%s", keep, tasks)
		}
	}
	if strings.Contains(tasks, `"9090"`) || strings.Count(tasks, `"label": "bridgetun: intercept api"`) != 1 {
		t.Errorf("the stale intercept task was not replaced exactly once:\n%s", tasks)
	}
	if !strings.HasPrefix(launch, "{\n    // Use IntelliSense to learn about possible attributes.\n    \"version\": \"0.2.0\",\n    \"configurations\": [\n        {\n            \"name\": \"Launch worker\",") {
		t.Errorf("launch.json lost the user's start:\n%s", launch)
	}
	golden(t, "existing/tasks.json", tasks)
	golden(t, "existing/launch.json", launch)
}

// TestRefusesWhatItCannotRead: a tasks.json that is not JSON with
// comments, or of another version, is an error naming it, and nothing at
// all is written.
func TestRefusesWhatItCannotRead(t *testing.T) {
	for name, content := range map[string]string{
		"broken":      `{"version": "2.0.0", "tasks": [ {"label": "x" ]}`,
		"old version": `{"version": "0.1.0", "command": "make"}`,
		"not a list":  `{"version": "2.0.0", "tasks": {}}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := workspace(t, map[string]string{".vscode/tasks.json": content, "go.mod": "module x\n"})
			before := snapshot(t, dir)
			_, err := Write(Config{Service: "api", Port: "8080", Dir: dir})
			if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, ".vscode/tasks.json")) || strings.Contains(err.Error(), "\n") {
				t.Errorf("got error %v, want one line naming tasks.json", err)
			}
			if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
				t.Errorf("workspace changed (-before +after):\n%s", diff)
			}
		})
	}
}

// TestLanguages: each language's launch configuration, the program
// defaults and --program, isolation's arguments, and the errors.
func TestLanguages(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   map[string]string
		cfg     Config
		want    map[string]any // members of the launch configuration; nil: no launch.json
		args    string         // in the intercept task's args
		wantErr string
	}{
		{name: "node", files: map[string]string{"package.json": "{}", "server.js": ""}, cfg: Config{Port: "3000"},
			want: map[string]any{"type": "node", "program": "${workspaceFolder}/server.js"}},
		{name: "python", files: map[string]string{"pyproject.toml": ""}, cfg: Config{Port: "8000", Program: "app/main.py"},
			want: map[string]any{"type": "debugpy", "program": "${workspaceFolder}/app/main.py", "console": "integratedTerminal"}},
		{name: "go program", files: map[string]string{}, cfg: Config{Port: "8080", Language: "go", Program: "./cmd/api"},
			want: map[string]any{"type": "go", "mode": "debug", "program": "${workspaceFolder}/cmd/api"}},
		{name: "program picks the language", files: map[string]string{}, cfg: Config{Port: "8080", Program: "srv/app.py"},
			want: map[string]any{"type": "debugpy"}},
		{name: "isolated", files: map[string]string{"go.mod": ""}, cfg: Config{Port: "8080", RouteAs: "alice"},
			want: map[string]any{"type": "go"}, args: `"--isolate", "--route-as", "alice"`},
		{name: "tasks only", files: map[string]string{}, cfg: Config{Port: "8080", Language: "none"}},
		{name: "unknown workspace", files: map[string]string{}, cfg: Config{Port: "8080"}, wantErr: "--language go|node|python"},
		{name: "node without program", files: map[string]string{"package.json": "{}"}, cfg: Config{Port: "8080"}, wantErr: "--program"},
		{name: "bad language", files: map[string]string{}, cfg: Config{Port: "8080", Language: "rust"}, wantErr: `--language "rust"`},
		{name: "bad port", files: map[string]string{"go.mod": ""}, cfg: Config{Port: "http"}, wantErr: `--port "http"`},
		{name: "bad service", files: map[string]string{"go.mod": ""}, cfg: Config{Service: "API", Port: "8080"}, wantErr: "not a Service name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := workspace(t, tc.files)
			cfg := tc.cfg
			cfg.Dir = dir
			if cfg.Service == "" {
				cfg.Service = "api"
			}
			_, err := Write(cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
				}
				if _, err := os.Stat(filepath.Join(dir, ".vscode")); err == nil {
					t.Error("wrote .vscode despite the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tasks := read(t, dir, ".vscode/tasks.json")
			checkTasks(t, []byte(tasks))
			if tc.args != "" && !strings.Contains(strings.Join(strings.Fields(tasks), " "), tc.args) {
				t.Errorf("intercept args lack %s:\n%s", tc.args, tasks)
			}
			if tc.want == nil {
				if _, err := os.Stat(filepath.Join(dir, ".vscode/launch.json")); err == nil {
					t.Error("launch.json written for --language none")
				}
				return
			}
			launch := read(t, dir, ".vscode/launch.json")
			checkLaunch(t, []byte(launch))
			c := decodeJSONC(t, []byte(launch))["configurations"].([]any)[0].(map[string]any)
			for k, v := range tc.want {
				if c[k] != v {
					t.Errorf("%s = %v, want %v", k, c[k], v)
				}
			}
			for k, v := range map[string]any{"request": "launch", "envFile": "${workspaceFolder}/.vscode/bridgetun/api.env",
				"preLaunchTask": "bridgetun: intercept api", "postDebugTask": "bridgetun: leave api"} {
				if c[k] != v {
					t.Errorf("%s = %v, want %v", k, c[k], v)
				}
			}
			if env, _ := c["env"].(map[string]any); env["GRPC_DNS_RESOLVER"] != "native" {
				t.Errorf("env = %v, want GRPC_DNS_RESOLVER=native", c["env"])
			}
		})
	}
}

// TestPatternsMatchIntercept: the background patterns match the lines
// devflow.Intercept really prints (its format strings, read from its
// source so that a changed wording fails here), plain and as a terminal
// shows them, and the end pattern only for this port.
func TestPatternsMatchIntercept(t *testing.T) {
	src, err := os.ReadFile("../intercept.go")
	if err != nil {
		t.Fatal(err)
	}
	const envFormat = `"environment of %s/%s resolved (%d variables), written to %s"`
	const waitFormat = `"waiting for %s to listen on 127.0.0.1:%d (up to %s)"`
	const errFormat = `"--env-file %s: %w"`
	for _, f := range []string{envFormat, waitFormat, errFormat} {
		if !strings.Contains(string(src), f) {
			t.Fatalf("devflow/intercept.go no longer prints %s: update the task's patterns", f)
		}
	}
	unquote := func(s string) string { return strings.Trim(s, `"`) }
	envLine := fmt.Sprintf(unquote(envFormat), "api-7d9f-x2", "api", 12, "/w/.vscode/bridgetun/api.env") + " 0.4s"
	waitLine := fmt.Sprintf(unquote(waitFormat), "`bridgetun vscode-hold`", 8080, 5*time.Minute)
	begins, ends := regexp.MustCompile(beginsPattern), regexp.MustCompile(endsPattern(8080))
	for _, decorate := range []func(string) string{
		func(s string) string { return s },
		func(s string) string { return "\x1b[33m…\x1b[0m " + s }, // progress on a terminal
	} {
		if !begins.MatchString(decorate(envLine)) {
			t.Errorf("beginsPattern %q does not match %q", beginsPattern, decorate(envLine))
		}
		if !ends.MatchString(decorate(waitLine)) {
			t.Errorf("endsPattern %q does not match %q", endsPattern(8080), decorate(waitLine))
		}
	}
	for _, other := range []int{80, 18080, 80801} {
		if l := fmt.Sprintf(unquote(waitFormat), "`x`", other, time.Minute); ends.MatchString(l) {
			t.Errorf("endsPattern for 8080 matches %q", l)
		}
	}
	errLine := "bridgetun: " + fmt.Sprintf(strings.Replace(unquote(errFormat), "%w", "%s", 1), "/w/.vscode/bridgetun/api.env", "/w/.vscode/bridgetun/api.env is a symlink: refusing to write secrets through it")
	m := regexp.MustCompile(envFileError).FindStringSubmatch(errLine)
	if m == nil || m[1] != "/w/.vscode/bridgetun/api.env" || !strings.HasPrefix(m[2], "/w/.vscode/bridgetun/api.env is a symlink") {
		t.Errorf("envFileError %q on %q: got %q", envFileError, errLine, m)
	}
}
