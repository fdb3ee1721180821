package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestVSCodeHelpExamples runs every example of vscode --help verbatim in a
// workspace laid out as the comments say: each writes its files, and
// running it again writes nothing.
func TestVSCodeHelpExamples(t *testing.T) {
	root := t.TempDir()
	for name, content := range map[string]string{"ws/go.mod": "module example.com/api\n", "ws/server.js": "", "stats/app/main.py": ""} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(filepath.Join(root, "ws"))
	var n int
	for _, line := range strings.Split(newVSCodeCmd().Example, "\n") {
		args, ok := strings.CutPrefix(strings.TrimSpace(line), "bridgetun ")
		if !ok {
			continue
		}
		n++
		out, err := execRoot(t, t.TempDir(), strings.Fields(args)...)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if !strings.Contains(out, "wrote") || !strings.Contains(out, "F5") {
			t.Errorf("%s: output %q, want the files written and how to start", line, out)
		}
		again, err := execRoot(t, t.TempDir(), strings.Fields(args)...)
		if err != nil || strings.Contains(again, "wrote") {
			t.Errorf("%s again: %v, %q; want everything unchanged", line, err, again)
		}
	}
	if n != 3 {
		t.Fatalf("found %d examples, want 3", n)
	}
	if _, err := os.Stat(filepath.Join(root, "stats/.vscode/launch.json")); err != nil {
		t.Errorf("--dir ../stats: %v", err)
	}
}

// TestVSCodeJSON: --json prints the files and the names VS Code shows.
func TestVSCodeJSON(t *testing.T) {
	ws := t.TempDir()
	if err := os.WriteFile(filepath.Join(ws, "go.mod"), []byte("module x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := execRoot(t, t.TempDir(), "vscode", "api", "--port", "8080", "--dir", ws, "--json")
	if err != nil {
		t.Fatal(err)
	}
	got := decodeJSON(t, out)
	if got["launch"] != "bridgetun: debug api (Go)" || got["task"] != "bridgetun: intercept api" {
		t.Errorf("got %v", got)
	}
	if files, _ := got["files"].([]any); len(files) != 2 {
		t.Errorf("files = %v, want tasks.json and launch.json", got["files"])
	}
	if _, err := execRoot(t, t.TempDir(), "vscode", "api", "--dir", ws); err == nil || !strings.Contains(err.Error(), "--port") {
		t.Errorf("without --port: got %v, want an error asking for it", err)
	}
}

// TestVSCodeHold: the intercept task's command waits until interrupted
// and then exits 0 (so that the intercept that stopped it ends cleanly).
func TestVSCodeHold(t *testing.T) {
	bin := buildBinary(t)
	cmd := exec.Command(bin, "vscode-hold")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 9)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "holding: " {
		t.Fatalf("first output %q, %v; want it to say it is holding", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after SIGINT: %v, want exit 0", err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("still running 10s after SIGINT")
	}
}
