package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// buildBinary builds this command into a temporary directory once per
// test binary run and returns its path.
func buildBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "bridgetun")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runBinary runs the built binary with a state dir of its own (nothing is
// up there) and returns stdout, stderr and the exit code.
func runBinary(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "BRIDGETUN_STATE_DIR="+dir, "XDG_RUNTIME_DIR="+dir, "NO_COLOR=1")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// TestBinaryJSONAndExitCodes runs the real binary without a cluster or a
// session: --json prints one JSON object and exits 0 where the help says
// "nothing up" is no error; failures exit 1 with one line on stderr and
// nothing on stdout, --json or not.
func TestBinaryJSONAndExitCodes(t *testing.T) {
	bin := buildBinary(t)
	for _, tc := range []struct {
		args     []string
		wantCode int
		want     map[string]any // the JSON on stdout; nil: stdout empty, one error line on stderr
	}{
		{args: []string{"status", "--json"}, want: map[string]any{"state": "down"}},
		{args: []string{"down", "--json"}, want: map[string]any{"state": "down", "ended": false, "repaired": []any{}}},
		{args: []string{"status"}, wantCode: 1},
		{args: []string{"down"}, wantCode: 1},
		{args: []string{"leave", "api"}, wantCode: 1},
		{args: []string{"leave", "api", "--json"}, wantCode: 1},
		{args: []string{"up", "--netstack", "--json"}, wantCode: 1},
		{args: []string{"intercept", "api", "--port", "8080", "--json"}, wantCode: 1},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, code := runBinary(t, bin, tc.args...)
			if code != tc.wantCode {
				t.Fatalf("exit code %d, want %d (stdout %q, stderr %q)", code, tc.wantCode, stdout, stderr)
			}
			if tc.want == nil {
				if stdout != "" {
					t.Errorf("stdout %q on failure, want none", stdout)
				}
				if lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "bridgetun: ") {
					t.Errorf("stderr %q, want one line starting %q", stderr, "bridgetun: ")
				}
				return
			}
			if diff := cmp.Diff(tc.want, decodeJSON(t, stdout)); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("version", func(t *testing.T) {
		stdout, stderr, code := runBinary(t, bin, "version", "--json")
		got := decodeJSON(t, stdout)
		if v, _ := got["version"].(string); code != 0 || stderr != "" || v == "" || len(got) != 1 {
			t.Fatalf("version --json: exit %d, stdout %q, stderr %q; want 0 and {\"version\": …}", code, stdout, stderr)
		}
		text, _, code := runBinary(t, bin, "version")
		if want := "bridgetun " + got["version"].(string) + "\n"; code != 0 || text != want {
			t.Errorf("version: exit %d, %q; want 0, %q", code, text, want)
		}
	})
}

// TestHelpStatesExitCodes: the root help and the help of every command
// that takes --json say what their exit codes mean.
func TestHelpStatesExitCodes(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"version", "--help"}, {"status", "--help"}, {"up", "--help"}, {"intercept", "--help"}, {"leave", "--help"}, {"down", "--help"}} {
		out, err := execRoot(t, t.TempDir(), args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.Contains(out, "Exit codes:") {
			t.Errorf("%v: no \"Exit codes:\" in\n%s", args, out)
		}
	}
}
