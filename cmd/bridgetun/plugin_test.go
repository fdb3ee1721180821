package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
)

func TestProgramNameFor(t *testing.T) {
	for argv0, want := range map[string]string{
		"bridgetun":                                  "bridgetun",
		"/usr/local/bin/bridgetun":                   "bridgetun",
		"./bin/kubectl-bridgetun":                    "kubectl bridgetun",
		"/home/a/.krew/bin/kubectl-bridgetun":        "kubectl bridgetun",
		`C:\Users\a\.krew\bin\kubectl-bridgetun.exe`: "kubectl bridgetun",
		"/usr/bin/kubectl_complete-bridgetun":        "kubectl bridgetun",
		"bridgetun.test":                             "bridgetun",
		"kubectl-bridgetun-old":                      "bridgetun",
	} {
		if runtime.GOOS != "windows" {
			argv0 = strings.ReplaceAll(argv0, `\`, "/")
		}
		if got := programNameFor(argv0); got != want {
			t.Errorf("programNameFor(%q): got %q, want %q", argv0, got, want)
		}
	}
	if diff := cmp.Diff([]string{"__complete", "intercept", ""}, pluginArgs("/p/kubectl_complete-bridgetun", []string{"intercept", ""})); diff != "" {
		t.Errorf("completion helper's args (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"up"}, pluginArgs("/p/kubectl-bridgetun", []string{"up"})); diff != "" {
		t.Errorf("plugin's args (-want +got):\n%s", diff)
	}
}

func TestRewriteCommandLines(t *testing.T) {
	root := newRootCmd()
	re := commandLineRe(root)
	for in, want := range map[string]string{
		"not up (start it with `bridgetun up`)":              "not up (start it with `kubectl bridgetun up`)",
		"  sudo bridgetun up -n my-app":                      "  sudo kubectl bridgetun up -n my-app",
		"bridgetun down, then bridgetun up --context CTX":    "kubectl bridgetun down, then kubectl bridgetun up --context CTX",
		"see 'bridgetun status'; (bridgetun leave SERVICE)":  "see 'kubectl bridgetun status'; (kubectl bridgetun leave SERVICE)",
		"Run \"bridgetun --help\"":                           "Run \"kubectl bridgetun --help\"",
		"A bridgetun.yaml in the working directory":          "A bridgetun.yaml in the working directory",
		"~/.local/state/bridgetun/ and bridgetun-agent":      "~/.local/state/bridgetun/ and bridgetun-agent",
		"its exit code becomes bridgetun's":                  "its exit code becomes bridgetun's",
		"bridgetun gives this machine the cluster's pod IPs": "bridgetun gives this machine the cluster's pod IPs",
		"bridgetun upgrade is no command":                    "bridgetun upgrade is no command",
	} {
		if got := rewriteCommandLines(re, in, pluginName); got != want {
			t.Errorf("rewrite %q:\n got %q\nwant %q", in, got, want)
		}
	}
}

// TestRenameProgram: as the plugin, every help text, example, usage line
// and flag help of the tree names `kubectl bridgetun`, and none a bare
// `bridgetun SUBCOMMAND`.
func TestRenameProgram(t *testing.T) {
	root := newRootCmd()
	renameProgram(root, pluginName)
	re := commandLineRe(root)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		var b bytes.Buffer
		c.SetOut(&b)
		if err := c.Help(); err != nil {
			t.Fatal(err)
		}
		help := b.String()
		if c.Runnable() && !strings.Contains(help, "Usage:\n  kubectl bridgetun ") {
			t.Errorf("%s: usage does not name kubectl bridgetun:\n%s", c.CommandPath(), help)
		}
		for _, m := range re.FindAllStringIndex(help, -1) {
			if !strings.HasSuffix(help[:m[0]+1], "kubectl ") {
				t.Errorf("%s: help still says %q", c.CommandPath(), help[max(0, m[0]-20):m[1]])
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if got := programText(root, "not up (start it with `bridgetun up`)"); got != "not up (start it with `kubectl bridgetun up`)" {
		t.Errorf("programText: got %q", got)
	}
	plain := newRootCmd()
	if got := programText(plain, "start it with `bridgetun up`"); got != "start it with `bridgetun up`" {
		t.Errorf("programText as bridgetun: got %q", got)
	}
}

// TestPluginBinary builds the binary, links it as kubectl-bridgetun and
// kubectl_complete-bridgetun, and runs them: help and errors say
// `kubectl bridgetun`, the completion helper answers cobra's __complete.
func TestPluginBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	exe := ""
	if runtime.GOOS == "windows" {
		exe = ".exe"
	}
	bin := filepath.Join(dir, "bridgetun"+exe)
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, name := range []string{pluginFile, pluginComplete} {
		if err := os.Link(bin, filepath.Join(dir, name+exe)); err != nil {
			t.Fatal(err)
		}
	}
	run := func(name string, args ...string) (string, string, error) {
		cmd := exec.Command(filepath.Join(dir, name+exe), args...)
		cmd.Env = append(os.Environ(), "BRIDGETUN_STATE_DIR="+dir, "KUBECONFIG="+filepath.Join(dir, "none"))
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		return out.String(), errOut.String(), err
	}

	out, _, err := run(pluginFile, "--help")
	if err != nil {
		t.Fatalf("kubectl-bridgetun --help: %v", err)
	}
	for _, want := range []string{"Usage:\n  kubectl bridgetun [command]", `Use "kubectl bridgetun [command] --help"`} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl-bridgetun --help lacks %q:\n%s", want, out)
		}
	}
	out, _, err = run(pluginFile, "intercept", "--help")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "\n  kubectl bridgetun intercept api --port 8080\n") || !strings.Contains(out, "`kubectl bridgetun up` must be running") {
		t.Errorf("intercept --help as the plugin:\n%s", out)
	}
	_, stderr, err := run(pluginFile, "leave", "api")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("leave with nothing up: got %v, want exit 1", err)
	}
	if want := "kubectl bridgetun: not up (start it with `kubectl bridgetun up`)\n"; stderr != want {
		t.Errorf("leave's error: got %q, want %q", stderr, want)
	}
	out, _, err = run("bridgetun", "--help")
	if err != nil || !strings.Contains(out, "Usage:\n  bridgetun [command]") || strings.Contains(out, "kubectl") {
		t.Errorf("bridgetun --help: %v\n%s", err, out)
	}
	out, _, err = run(pluginComplete, "up", "--context", "")
	if err != nil || out != ":4\n" {
		t.Errorf("kubectl_complete-bridgetun up --context '': got %q, %v; want :4 (no contexts, no files)", out, err)
	}
}
