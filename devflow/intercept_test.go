package devflow

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/google/go-cmp/cmp"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/session"
)

// interceptConfig is an intercept of api → 127.0.0.1:18080 over fs and a
// fake cluster holding apiObjects, volumes mirrored under a temporary
// directory.
func interceptConfig(t *testing.T, fs *fakeSession, fc *fakeCluster, out *syncBuffer) InterceptConfig {
	t.Helper()
	if fc.objs == nil {
		fc.objs = apiObjects()
	}
	return InterceptConfig{
		Spec:      session.InterceptSpec{Service: "api", LocalPort: 18080},
		Replicate: Replication{Mount: t.TempDir()},
		Cluster:   fc.Cluster(cluster.Options{}),
		Session:   fs,
		Stdio:     Stdio{Out: out, Err: out},
	}
}

func TestInterceptReplicates(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, ".env")
	mount := filepath.Join(dir, "vol")
	fs := &fakeSession{status: session.Status{Context: "kind-dev", Namespace: "ns"}}
	fc := &fakeCluster{}
	out := newSyncBuffer("")
	cfg := interceptConfig(t, fs, fc, out)
	cfg.Detach = true
	cfg.Replicate = Replication{
		EnvFile: envFile,
		Mount:   mount,
		Env:     []EnvVar{{"LOG_LEVEL", "debug"}, {"A", "from-file"}},
		Volumes: []VolumeCopy{{Path: "/var/lib/data"}, {Path: "/srv/cache", Local: filepath.Join(dir, "cache")}},
	}
	if err := Intercept(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}

	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	wantEnv := `A="1"
B="1-x"
LOG_LEVEL="debug"
A="from-file"
BRIDGETUN_VOLUME_ROOT="` + mount + `"
`
	if got := string(b); got != wantEnv {
		t.Errorf("env file: got\n%s\nwant\n%s", got, wantEnv)
	}
	if fi, err := os.Stat(envFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("env file mode: got %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if b, err := os.ReadFile(filepath.Join(mount, "etc/api/level")); err != nil || string(b) != "info" {
		t.Errorf("mirrored /etc/api/level: got %q (%v), want %q", b, err, "info")
	}
	wantCopies := []string{
		"app:/var/lib/data → " + filepath.Join(mount, "var/lib/data"),
		"app:/srv/cache → " + filepath.Join(dir, "cache"),
	}
	if d := cmp.Diff(wantCopies, fc.copies); d != "" {
		t.Errorf("copies (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]cluster.Options{{Context: "kind-dev", Namespace: "ns"}}, fc.opts); d != "" {
		t.Errorf("cluster options, empty ones the session's (-want +got):\n%s", d)
	}
	wantOut := `intercepting ns/api (Deployment/api, container app port 8080) → 127.0.0.1:18080
all traffic to the Service comes here
volume settings (configMap) → ` + filepath.Join(mount, "etc/api") + `
volume scratch (emptyDir) at /tmp/scratch not mirrored (name it under volumes: in bridgetun.yaml to copy it)
copied /var/lib/data → ` + filepath.Join(mount, "var/lib/data") + `
copied /srv/cache → ` + filepath.Join(dir, "cache") + `
environment of api-7d9/app (5 variables) written to ` + envFile + `
detached: ` + "`bridgetun leave api`" + ` ends it (volumes were copied once, not kept current)
`
	if d := cmp.Diff(wantOut, out.String()); d != "" {
		t.Errorf("output (-want +got):\n%s", d)
	}
}

func TestInterceptIsolatedOutput(t *testing.T) {
	fs := &fakeSession{status: session.Status{Namespace: "ns"}}
	out := newSyncBuffer("")
	cfg := interceptConfig(t, fs, &fakeCluster{}, out)
	cfg.Spec.RouteAs, cfg.Replicate.NoMount, cfg.Detach = "alice", true, true
	if err := Intercept(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	want := "isolated: only requests with header kubernetes-route-as: alice come here\nlocal URL (adds the header): http://127.0.0.1:41000\n"
	if got := out.String(); !strings.Contains(got, want) {
		t.Errorf("output: got\n%s\nwant it to contain\n%s", got, want)
	}
}

func TestInterceptLifecycle(t *testing.T) {
	for _, tc := range []struct {
		name         string
		command      string // run by sh -c; MARK is a file the command may create
		detach       bool
		interceptErr error
		statusErr    error
		leaveErr     error
		noPod        bool
		wantCode     int
		wantErr      string // a substring of the error; "" = none, or an exit code
		wantCalls    []string
		wantEnvFile  bool
		wantMarkedAt string // "leave": the command had exited when leave started; "never": it never ran
	}{
		{name: "command exits 0", command: `touch "$MARK"`, wantCalls: []string{"status", "intercept api", "leave api"}, wantEnvFile: true, wantMarkedAt: "leave"},
		{name: "command exits 3", command: `touch "$MARK"; exit 3`, wantCode: 3, wantCalls: []string{"status", "intercept api", "leave api"}, wantEnvFile: true, wantMarkedAt: "leave"},
		{name: "command not found", command: "-", wantErr: "run /nonexistent/bridgetun-cmd", wantCalls: []string{"status", "intercept api", "leave api"}, wantEnvFile: true},
		{name: "leave fails after the command", command: `touch "$MARK"; exit 3`, leaveErr: errors.New("gateway gone"),
			wantErr: "leave api: gateway gone", wantCalls: []string{"status", "intercept api", "leave api"}, wantEnvFile: true, wantMarkedAt: "leave"},
		{name: "detach returns without leave", command: `touch "$MARK"`, detach: true, wantCalls: []string{"status", "intercept api"}, wantEnvFile: true, wantMarkedAt: "never"},
		{name: "failed intercept leaves nothing", command: `touch "$MARK"`, interceptErr: errors.New("api is intercepted by bob@laptop"),
			wantErr: "intercepted by bob@laptop", wantCalls: []string{"status", "intercept api"}, wantMarkedAt: "never"},
		{name: "no session", command: `touch "$MARK"`, statusErr: session.ErrNotRunning, wantErr: "not up", wantCalls: []string{"status"}, wantMarkedAt: "never"},
		{name: "failed replication leaves", command: `touch "$MARK"`, noPod: true, wantErr: "service ns/api has no running pod",
			wantCalls: []string{"status", "intercept api", "leave api"}, wantMarkedAt: "never"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			mark := filepath.Join(dir, "mark")
			fs := &fakeSession{status: session.Status{Namespace: "ns"}, interceptErr: tc.interceptErr, leaveErr: tc.leaveErr}
			fs.statusErr = tc.statusErr
			markedAtLeave := false
			fs.onLeave = func() { _, err := os.Stat(mark); markedAtLeave = err == nil }
			fc := &fakeCluster{}
			if tc.noPod {
				fc.objs = apiObjects()[:1]
			}
			cfg := interceptConfig(t, fs, fc, newSyncBuffer(""))
			cfg.Replicate.EnvFile = filepath.Join(dir, ".env")
			cfg.Replicate.Env = []EnvVar{{"MARK", mark}}
			cfg.Command, cfg.Detach = []string{"sh", "-c", tc.command}, tc.detach
			if tc.command == "-" {
				cfg.Command = []string{"/nonexistent/bridgetun-cmd"}
			}

			err := Intercept(t.Context(), cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("got %v, want an error containing %q", err, tc.wantErr)
				}
			} else if got := exitCode(t, err); got != tc.wantCode {
				t.Errorf("exit code: got %d, want %d", got, tc.wantCode)
			}
			if d := cmp.Diff(tc.wantCalls, fs.Calls()); d != "" {
				t.Errorf("session calls (-want +got):\n%s", d)
			}
			if _, err := os.Stat(cfg.Replicate.EnvFile); (err == nil) != tc.wantEnvFile {
				t.Errorf("env file written: got %v, want %v", err == nil, tc.wantEnvFile)
			}
			_, err = os.Stat(mark)
			switch tc.wantMarkedAt {
			case "leave":
				if !markedAtLeave {
					t.Errorf("command had exited when leave started: got false, want true")
				}
			case "never":
				if err == nil {
					t.Errorf("command ran: got true, want false")
				}
			}
		})
	}
}

func TestInterceptCommandEnv(t *testing.T) {
	fs := &fakeSession{status: session.Status{Namespace: "ns", HTTPProxy: "127.0.0.1:1081"}}
	out := newSyncBuffer("")
	cfg := interceptConfig(t, fs, &fakeCluster{}, out)
	cfg.Replicate.Env = []EnvVar{{"LOG_LEVEL", "debug"}}
	cfg.Command = []string{"sh", "-c", `echo "env: $A $B $LOG_LEVEL $BRIDGETUN_VOLUME_ROOT $GRPC_DNS_RESOLVER $HTTP_PROXY"`}
	if err := Intercept(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	want := "env: 1 1-x debug " + cfg.Replicate.Mount + " native http://127.0.0.1:1081\n"
	if got := out.String(); !strings.Contains(got, want) {
		t.Errorf("output: got\n%s\nwant a line %q", got, want)
	}
}

// TestInterceptCtrlC cancels ctx, as Ctrl-C does, once the intercept is
// held: the command (if any) gets an interrupt, then the intercept is left.
func TestInterceptCtrlC(t *testing.T) {
	for _, tc := range []struct {
		name     string
		command  []string
		await    string // printed once the intercept is held
		wantCode int
	}{
		{name: "waiting", await: "press Ctrl-C to end the intercept\n"},
		{name: "command running", command: []string{"sh", "-c", `trap "exit 7" INT; echo ready; while :; do sleep 0.05; done`}, await: "ready\n", wantCode: 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := &fakeSession{status: session.Status{Namespace: "ns"}}
			out := newSyncBuffer(tc.await)
			cfg := interceptConfig(t, fs, &fakeCluster{}, out) // with a volume mirror running
			cfg.Command = tc.command
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- Intercept(ctx, cfg) }()
			select {
			case <-out.seen:
			case err := <-done:
				t.Fatalf("Intercept returned %v before %q was printed; output:\n%s", err, tc.await, out)
			}
			cancel()
			if got := exitCode(t, <-done); got != tc.wantCode {
				t.Errorf("exit code: got %d, want %d", got, tc.wantCode)
			}
			if d := cmp.Diff([]string{"status", "intercept api", "leave api"}, fs.Calls()); d != "" {
				t.Errorf("session calls (-want +got):\n%s", d)
			}
			if got, want := out.String(), "left api: restored Deployment/api\n"; !strings.HasSuffix(got, want) {
				t.Errorf("output: got\n%s\nwant it to end with %q", got, want)
			}
		})
	}
}

// TestInterceptEndsElsewhere: without a command, an intercept that the
// session stops holding (leave from another terminal, down) ends the wait
// without a leave of its own.
func TestInterceptEndsElsewhere(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(*fakeSession)
	}{
		{name: "left elsewhere", end: func(fs *fakeSession) { fs.endElsewhere("api") }},
		{name: "session down", end: (*fakeSession).goDown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fs := &fakeSession{status: session.Status{Namespace: "ns"}}
				out := newSyncBuffer("")
				cfg := interceptConfig(t, fs, &fakeCluster{}, out)
				cfg.Replicate.NoMount = true
				done := make(chan error, 1)
				go func() { done <- Intercept(t.Context(), cfg) }()
				synctest.Wait() // waiting for the next poll
				if !strings.Contains(out.String(), "press Ctrl-C") {
					t.Fatalf("output: got\n%s\nwant the intercept held", out)
				}
				tc.end(fs)
				if err := <-done; err != nil {
					t.Fatalf("got %v, want nil", err)
				}
				if got, want := out.String(), "the intercept of api ended elsewhere (leave or down)\n"; !strings.HasSuffix(got, want) {
					t.Errorf("output: got\n%s\nwant it to end with %q", got, want)
				}
				if calls := fs.Calls(); calls[len(calls)-1] != "status" || strings.Contains(strings.Join(calls, ","), "leave") {
					t.Errorf("session calls: got %q, want polls and no leave", calls)
				}
			})
		})
	}
}

func TestExitError(t *testing.T) {
	err := error(&ExitError{Code: 3})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 {
		t.Errorf("errors.As: got %v, want code 3", ee)
	}
	if got, want := err.Error(), "exit status 3"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
