package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bridgetun/bridgetun/internal/version"
	"github.com/bridgetun/bridgetun/session"
)

// execRoot runs `bridgetun ARGS` in-process with a state dir of its own
// (nothing up there unless the test serves its socket); it returns stdout
// and the command's error.
func execRoot(t *testing.T, stateDir string, args ...string) (string, error) {
	t.Helper()
	t.Setenv("BRIDGETUN_STATE_DIR", stateDir)
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// decodeJSON parses out as exactly one JSON object.
func decodeJSON(t *testing.T, out string) map[string]any {
	t.Helper()
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader([]byte(out)))
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("output is not a JSON object: %v: %q", err, out)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("more than one JSON value in %q", out)
	}
	return m
}

// TestJSONWhenDown: with nothing up, --json still prints one JSON object
// (status and down exit 0, leave fails with its reason and prints nothing).
func TestJSONWhenDown(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    map[string]any
		wantErr error
	}{
		{args: []string{"status", "--json"}, want: map[string]any{"state": "down"}},
		{args: []string{"down", "--json"}, want: map[string]any{"state": "down", "ended": false, "repaired": []any{}}},
		{args: []string{"version", "--json"}, want: map[string]any{"version": version.Version}},
		{args: []string{"leave", "api", "--json"}, wantErr: session.ErrNotRunning},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			out, err := execRoot(t, t.TempDir(), tc.args...)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("%v: got error %v, want %v", tc.args, err, tc.wantErr)
			}
			if tc.wantErr != nil {
				if out != "" {
					t.Errorf("%v: got output %q on error, want none", tc.args, out)
				}
				return
			}
			if diff := cmp.Diff(tc.want, decodeJSON(t, out)); diff != "" {
				t.Errorf("%v: output (-want +got):\n%s", tc.args, diff)
			}
		})
	}
}

// TestTextWhenDown: without --json, status and down with nothing up are
// still errors (exit 1), as their help says.
func TestTextWhenDown(t *testing.T) {
	for _, args := range [][]string{{"status"}, {"down"}} {
		if _, err := execRoot(t, t.TempDir(), args...); !errors.Is(err, session.ErrNotRunning) {
			t.Errorf("%v: got error %v, want %v", args, err, session.ErrNotRunning)
		}
	}
}

// TestLeaveJSON: leave --json prints the service and what became of its
// workload, as a session on the socket answered.
func TestLeaveJSON(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "bridgetun.sock"))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /leave", func(w http.ResponseWriter, r *http.Request) {
		if got := r.URL.Query().Get("service"); got != "api" {
			http.Error(w, "no intercept of "+got, http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "deployment/api restored\n")
	})
	srv := &http.Server{Handler: mux}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})

	out, err := execRoot(t, dir, "leave", "api", "--json")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"service": "api", "result": "deployment/api restored"}
	if diff := cmp.Diff(want, decodeJSON(t, out)); diff != "" {
		t.Errorf("output (-want +got):\n%s", diff)
	}
	if _, err := execRoot(t, dir, "leave", "db", "--json"); err == nil || err.Error() != "no intercept of db" {
		t.Errorf("leave db: got error %v, want %q", err, "no intercept of db")
	}
}

// TestUpBackgroundJSON: once the background session is connected, --json
// prints its status as status --json does; without --json, the one line.
// --json without --background is refused before anything starts.
func TestUpBackgroundJSON(t *testing.T) {
	st := session.Status{State: "connected", PID: 4242, Mode: "netstack", TunnelAddress: "198.19.0.2"}
	var b bytes.Buffer
	if err := backgroundReady(&b, true, st, "/logs"); err != nil {
		t.Fatal(err)
	}
	var got session.Status
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("not JSON: %v: %q", err, b.String())
	}
	if diff := cmp.Diff(st, got); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
	b.Reset()
	if err := backgroundReady(&b, false, st, "/logs"); err != nil {
		t.Fatal(err)
	}
	if want := "running in the background (pid 4242), log in /logs; `bridgetun status`, `bridgetun down`\n"; b.String() != want {
		t.Errorf("text: got %q, want %q", b.String(), want)
	}
	if _, err := execRoot(t, t.TempDir(), "up", "--netstack", "--json"); err == nil || !strings.Contains(err.Error(), "--json goes with --background") {
		t.Errorf("up --json: got error %v, want it refused without --background", err)
	}
}

// TestInterceptDetachJSON: --json goes with --detach only (refused before
// anything is asked of a session), and prints the session's intercept of
// the Service.
func TestInterceptDetachJSON(t *testing.T) {
	if _, err := execRoot(t, t.TempDir(), "intercept", "api", "--port", "8080", "--json"); err == nil || !strings.Contains(err.Error(), "--json goes with --detach") {
		t.Errorf("intercept --json: got error %v, want it refused without --detach", err)
	}
	st := session.Status{State: "connected", Intercepts: []session.InterceptInfo{{Service: "web", LocalPort: 3000}, {Service: "api", LocalPort: 8080, State: session.InterceptActive}}}
	got, err := interceptOf(st, "api")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(st.Intercepts[1], got); diff != "" {
		t.Errorf("intercept (-want +got):\n%s", diff)
	}
	if _, err := interceptOf(st, "db"); err == nil {
		t.Error("db: got no error, want one (not intercepted)")
	}
}
