package devflow

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/session"
)

// interceptConfig is an intercept of api → 127.0.0.1:18080 over fs and a
// fake cluster holding apiObjects, volumes mirrored under a temporary
// directory. Something "listens" on the port once the file $LISTEN exists
// (a server started as Command creates it); without a Command, call
// listenNow.
func interceptConfig(t *testing.T, fs *fakeSession, fc *fakeCluster, out *syncBuffer) InterceptConfig {
	t.Helper()
	if fc.objs == nil {
		fc.objs = apiObjects()
	}
	mark := filepath.Join(t.TempDir(), "listening")
	return InterceptConfig{
		Spec:      session.InterceptSpec{Service: "api", LocalPort: 18080},
		Replicate: Replication{Mount: t.TempDir(), Env: []EnvVar{{"LISTEN", mark}}},
		Listening: func(context.Context, int) bool { _, err := os.Stat(mark); return err == nil },
		Cluster:   fc.Cluster(cluster.Options{}),
		Session:   fs,
		Stdio:     Stdio{Out: out, Err: out},
	}
}

// listenNow makes the local port of cfg "listen".
func listenNow(t *testing.T, cfg InterceptConfig) {
	t.Helper()
	if err := os.WriteFile(cfg.Replicate.Env[0].Value, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// gate is a FIFO a server command blocks on (`read x < "$GATE"`) until the
// fake session's Intercept opens it: the server goes on only once the
// intercept has been asked for.
func gate(t *testing.T, fs *fakeSession, cfg *InterceptConfig) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "gate")
	if err := mkfifo(path); err != nil {
		t.Fatal(err)
	}
	cfg.Replicate.Env = append(cfg.Replicate.Env, EnvVar{"GATE", path})
	fs.onIntercept = func() {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = f.WriteString("go\n")
		f.Close()
	}
}

// timings are the durations progress prints.
var timings = regexp.MustCompile(`\b\d+\.\ds\b`)

func TestInterceptReplicates(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, ".env")
	mount := filepath.Join(dir, "vol")
	fs := &fakeSession{status: session.Status{Context: "kind-dev", Namespace: "ns"}}
	fc := &fakeCluster{}
	out := newSyncBuffer("")
	cfg := interceptConfig(t, fs, fc, out)
	listenNow(t, cfg)
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
	// Not a terminal: plain lines, no symbols or colour.
	wantOut := `environment of api-7d9/app resolved (5 variables), written to ` + envFile + ` 0.0s
volumes of api-7d9/app mirrored under ` + mount + ` 0.0s
  volume settings (configMap) → ` + filepath.Join(mount, "etc/api") + `
  volume scratch (emptyDir) at /tmp/scratch not mirrored (name it under volumes: in bridgetun.yaml to copy it)
  copied /var/lib/data → ` + filepath.Join(mount, "var/lib/data") + `
  copied /srv/cache → ` + filepath.Join(dir, "cache") + `
patched deployment/api 0.0s
1 of 2 replicas ready
every pod of deployment/api runs the sidecar 0.0s
routed: all traffic of ns/api → 127.0.0.1:18080 (total 0.0s)
detached: ` + "`bridgetun leave api`" + ` ends it (volumes were copied once, not kept current)
`
	if d := cmp.Diff(wantOut, timings.ReplaceAllString(out.String(), "0.0s")); d != "" {
		t.Errorf("output (-want +got):\n%s", d)
	}
}

func TestInterceptIsolatedOutput(t *testing.T) {
	fs := &fakeSession{status: session.Status{Namespace: "ns"}}
	out := newSyncBuffer("")
	cfg := interceptConfig(t, fs, &fakeCluster{}, out)
	listenNow(t, cfg)
	cfg.Spec.RouteAs, cfg.Replicate.NoMount, cfg.Detach = "alice", true, true
	if err := Intercept(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	want := "routed: requests with kubernetes-route-as: alice of ns/api → 127.0.0.1:18080 (total 0.0s)\n" +
		"isolated: only requests with header kubernetes-route-as: alice come here\nlocal URL (adds the header): http://127.0.0.1:41000\n"
	if got := timings.ReplaceAllString(out.String(), "0.0s"); !strings.Contains(got, want) {
		t.Errorf("output: got\n%s\nwant it to contain\n%s", got, want)
	}
}

// TestInterceptLifecycle: the server (Command) starts with the pod's
// environment before the intercept is asked for, goes on once it is held
// (gate), and its exit ends the intercept with a leave.
func TestInterceptLifecycle(t *testing.T) {
	for _, tc := range []struct {
		name         string
		command      string // run by sh -c after `touch "$LISTEN"; read x < "$GATE"`; MARK is a file it may create
		detach       bool
		interceptErr error
		statusErr    error
		leaveErr     error
		wantCode     int
		wantErr      string // a substring of the error; "" = none, or an exit code
		wantCalls    []string
		wantEnvFile  bool
		wantMarkedAt string // "leave": the command had exited when leave started; "never": it never ran
	}{
		{name: "command exits 0", command: `touch "$MARK"`, wantCalls: []string{"status", "intercept api", "leave api"}, wantEnvFile: true, wantMarkedAt: "leave"},
		{name: "command exits 3", command: `touch "$MARK"; exit 3`, wantCode: 3, wantCalls: []string{"status", "intercept api", "leave api"}, wantEnvFile: true, wantMarkedAt: "leave"},
		{name: "leave fails after the command", command: `touch "$MARK"; exit 3`, leaveErr: errors.New("gateway gone"),
			wantErr: "leave api: gateway gone", wantCalls: []string{"status", "intercept api", "leave api"}, wantEnvFile: true, wantMarkedAt: "leave"},
		{name: "failed intercept stops the server", command: `touch "$MARK"`, interceptErr: errors.New("api is intercepted by bob@laptop"),
			wantErr: "intercepted by bob@laptop", wantCalls: []string{"status", "intercept api"}, wantEnvFile: true, wantMarkedAt: "never"},
		{name: "no session", command: `touch "$MARK"`, statusErr: session.ErrNotRunning, wantErr: "not up", wantCalls: []string{"status"}, wantMarkedAt: "never"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			mark := filepath.Join(dir, "mark")
			fs := &fakeSession{status: session.Status{Namespace: "ns"}, interceptErr: tc.interceptErr, leaveErr: tc.leaveErr}
			fs.statusErr = tc.statusErr
			markedAtLeave := false
			fs.onLeave = func() { _, err := os.Stat(mark); markedAtLeave = err == nil }
			cfg := interceptConfig(t, fs, &fakeCluster{}, newSyncBuffer(""))
			gate(t, fs, &cfg)
			cfg.Replicate.EnvFile = filepath.Join(dir, ".env")
			cfg.Replicate.Env = append(cfg.Replicate.Env, EnvVar{"MARK", mark})
			cfg.Command, cfg.Detach = []string{"sh", "-c", `touch "$LISTEN"; read x < "$GATE"; ` + tc.command}, tc.detach

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
					t.Errorf("command went on past the intercept: got true, want false")
				}
			}
		})
	}
}

// TestInterceptServerFirst: the server listens before the intercept is
// asked for, and the steps are printed in that order.
func TestInterceptServerFirst(t *testing.T) {
	fs := &fakeSession{status: session.Status{Namespace: "ns"}}
	out := newSyncBuffer("")
	cfg := interceptConfig(t, fs, &fakeCluster{}, out)
	listeningAtIntercept := false
	gate(t, fs, &cfg)
	release := fs.onIntercept
	fs.onIntercept = func() { listeningAtIntercept = cfg.Listening(t.Context(), 18080); release() }
	cfg.Replicate.NoMount = true
	cfg.Command = []string{"sh", "-c", `echo "server has A=$A"; touch "$LISTEN"; read x < "$GATE"`}
	if err := Intercept(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	if !listeningAtIntercept {
		t.Error("the intercept was asked for before the server listened")
	}
	want := []string{
		"environment of api-7d9/app resolved (4 variables)",
		"waiting for `sh -c " + cfg.Command[2] + "` to listen on 127.0.0.1:18080 (up to 1m0s)",
		"listens on 127.0.0.1:18080",
		"patched deployment/api",
		"routed: all traffic of ns/api → 127.0.0.1:18080",
		"left api: restored Deployment/api",
	}
	// The server's own output is copied as it comes: it may land anywhere after it started.
	if !strings.Contains(out.String(), "server has A=1\n") {
		t.Errorf("output: got\n%s\nwant the server's line with the pod's environment", out)
	}
	got, at := strings.Replace(out.String(), "server has A=1\n", "", 1), 0
	for _, w := range want {
		i := strings.Index(got[at:], w)
		if i < 0 {
			t.Fatalf("output: got\n%s\nwant, in this order, %q", got, want)
		}
		at += i + len(w)
	}
}

// TestInterceptServerExitsBeforeListening: its exit code and last lines,
// and the session never heard of it.
func TestInterceptServerExitsBeforeListening(t *testing.T) {
	for _, tc := range []struct {
		name     string
		command  string
		wantCode int    // ExitError; 0 = a plain error
		wantErr  string // with wantCode 0
		wantOut  []string
	}{
		{name: "exit 3", command: `echo starting; echo "listen tcp :18080: bind: address already in use" >&2; exit 3`, wantCode: 3,
			wantOut: []string{"last lines of `sh -c", "  | starting\n", "  | listen tcp :18080: bind: address already in use\n",
				"bridgetun: intercept: `sh -c", "exited with status 3 before it listened on 127.0.0.1:18080 (nothing patched)"}},
		{name: "exit 0 is an error too", command: `echo done`,
			wantErr: "exited with status 0 before it listened on 127.0.0.1:18080 (nothing patched)", wantOut: []string{"  | done\n"}},
		{name: "silent", command: `exit 4`, wantCode: 4, wantOut: []string{"printed nothing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := &fakeSession{status: session.Status{Namespace: "ns"}}
			out := newSyncBuffer("")
			cfg := interceptConfig(t, fs, &fakeCluster{}, out)
			cfg.Replicate.NoMount = true
			cfg.Command = []string{"sh", "-c", tc.command}
			err := Intercept(t.Context(), cfg)
			if tc.wantCode != 0 {
				if got := exitCode(t, err); got != tc.wantCode {
					t.Errorf("exit code: got %d, want %d", got, tc.wantCode)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Errorf("got %v, want one line containing %q", err, tc.wantErr)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output: got\n%s\nwant it to contain %q", out, w)
				}
			}
			if d := cmp.Diff([]string{"status"}, fs.Calls()); d != "" {
				t.Errorf("session calls, no intercept (-want +got):\n%s", d)
			}
		})
	}
}

// TestInterceptServerNeverListens: after --wait the server is stopped
// (SIGINT to its group) and waited for; the error names the port and the
// wait; nothing is patched.
func TestInterceptServerNeverListens(t *testing.T) {
	fs := &fakeSession{status: session.Status{Namespace: "ns"}}
	out := newSyncBuffer("")
	cfg := interceptConfig(t, fs, &fakeCluster{}, out)
	pidFile := filepath.Join(t.TempDir(), "pid")
	cfg.Replicate.NoMount, cfg.Wait = true, 300*time.Millisecond
	cfg.Replicate.Env = append(cfg.Replicate.Env, EnvVar{"PIDFILE", pidFile})
	cfg.Command = []string{"sh", "-c", `trap 'echo interrupted; exit 0' INT; echo $$ > "$PIDFILE"; while :; do sleep 0.05; done`}
	err := Intercept(t.Context(), cfg)
	want := "did not listen on 127.0.0.1:18080 within 300ms (stopped it, nothing patched): check the port it serves on, or give it longer with --wait"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want an error containing %q", err, want)
	}
	if !strings.Contains(out.String(), "  | interrupted\n") {
		t.Errorf("output: got\n%s\nwant the server's answer to SIGINT in its last lines", out)
	}
	b, _ := os.ReadFile(pidFile)
	if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid <= 0 || !processGone(pid) {
		t.Errorf("server pid %q: still there after Intercept returned", b)
	}
	if d := cmp.Diff([]string{"status"}, fs.Calls()); d != "" {
		t.Errorf("session calls, no intercept (-want +got):\n%s", d)
	}
}

// TestInterceptCtrlCWhileWaiting: Ctrl-C before the server listens stops
// it and patches nothing.
func TestInterceptCtrlCWhileWaiting(t *testing.T) {
	fs := &fakeSession{status: session.Status{Namespace: "ns"}}
	out := newSyncBuffer("armed\n")
	cfg := interceptConfig(t, fs, &fakeCluster{}, out)
	cfg.Replicate.NoMount = true
	cfg.Command = []string{"sh", "-c", `trap 'exit 9' INT; echo armed; while :; do sleep 0.05; done`}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Intercept(ctx, cfg) }()
	select {
	case <-out.seen:
	case err := <-done:
		t.Fatalf("Intercept returned %v before it waited; output:\n%s", err, out)
	}
	cancel()
	if got := exitCode(t, <-done); got != 9 {
		t.Errorf("exit code: got %d, want the server's 9", got)
	}
	if !strings.Contains(out.String(), "interrupted while waiting for `sh -c") {
		t.Errorf("output: got\n%s\nwant it to say it was interrupted", out)
	}
	if d := cmp.Diff([]string{"status"}, fs.Calls()); d != "" {
		t.Errorf("session calls, no intercept (-want +got):\n%s", d)
	}
}

func TestInterceptRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    cluster.Options
		listen  bool
		denied  bool
		want    string
		command bool
	}{
		{name: "nothing listens", want: "intercept: nothing listens on 127.0.0.1:18080: start your local server first, or give its command after -- (`bridgetun intercept api --port 18080 -- CMD ARGS`)"},
		{name: "another namespace", opts: cluster.Options{Namespace: "other"}, listen: true,
			want: "intercept: the session is connected to namespace \"ns\", not \"other\", and intercepts only there (to intercept in \"other\": `bridgetun down`, then `bridgetun up -n other`)"},
		{name: "another context", opts: cluster.Options{Context: "prod"}, listen: true, command: true,
			want: "intercept: the session is connected to context \"kind-dev\", not \"prod\" (to work in \"prod\": `bridgetun down`, then `bridgetun up --context prod`)"},
		{name: "the session's own namespace and context", opts: cluster.Options{Context: "kind-dev", Namespace: "ns"}, listen: true, denied: true,
			want: "intercept api: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := &fakeSession{status: session.Status{Context: "kind-dev", Namespace: "ns"}}
			out := newSyncBuffer("")
			fc := &fakeCluster{denied: tc.denied}
			cfg := interceptConfig(t, fs, fc, out)
			cfg.Cluster = fc.Cluster(tc.opts)
			if tc.listen {
				listenNow(t, cfg)
			}
			if tc.command {
				cfg.Command = []string{"sh", "-c", `touch "$MARK"`}
			}
			mark := filepath.Join(t.TempDir(), "mark")
			cfg.Replicate.Env = append(cfg.Replicate.Env, EnvVar{"MARK", mark})
			err := Intercept(t.Context(), cfg)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("got %v, want one line starting %q", err, tc.want)
			}
			if d := cmp.Diff([]string{"status"}, fs.Calls()); d != "" {
				t.Errorf("session calls (-want +got):\n%s", d)
			}
			if _, err := os.Stat(mark); err == nil {
				t.Error("the command ran")
			}
			if out.String() != "" {
				t.Errorf("output: got\n%s\nwant nothing before the refusal", out)
			}
		})
	}
}

// TestInterceptCtrlC cancels ctx, as Ctrl-C does, once the intercept is
// held: the server (if any) gets an interrupt, then the intercept is left.
func TestInterceptCtrlC(t *testing.T) {
	for _, tc := range []struct {
		name     string
		command  []string
		await    string // printed once the intercept is held
		wantCode int
	}{
		{name: "waiting", await: "press Ctrl-C to end the intercept\n"},
		{name: "server running", command: []string{"sh", "-c", `trap "exit 7" INT; touch "$LISTEN"; while :; do sleep 0.05; done`}, await: "routed: ", wantCode: 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := &fakeSession{status: session.Status{Namespace: "ns"}}
			out := newSyncBuffer(tc.await)
			cfg := interceptConfig(t, fs, &fakeCluster{}, out) // with a volume mirror running
			cfg.Command = tc.command
			if tc.command == nil {
				listenNow(t, cfg)
			}
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
// without a leave of its own; one the session holds as lost is an error
// with the session's reason.
func TestInterceptEndsElsewhere(t *testing.T) {
	const reason = "the gateway restored deployment/api after 15m0s without this workstation: run `bridgetun intercept api` again"
	for _, tc := range []struct {
		name      string
		end       func(*fakeSession)
		wantErr   string
		wantLeave bool
	}{
		{name: "left elsewhere", end: func(fs *fakeSession) { fs.endElsewhere("api") }},
		{name: "session down", end: (*fakeSession).goDown},
		{name: "lost", end: func(fs *fakeSession) { fs.lose("api", reason) }, wantErr: "intercept of api lost: " + reason, wantLeave: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fs := &fakeSession{status: session.Status{Namespace: "ns"}}
				out := newSyncBuffer("")
				cfg := interceptConfig(t, fs, &fakeCluster{}, out)
				listenNow(t, cfg)
				cfg.Replicate.NoMount = true
				done := make(chan error, 1)
				go func() { done <- Intercept(t.Context(), cfg) }()
				synctest.Wait() // waiting for the next poll
				if !strings.Contains(out.String(), "press Ctrl-C") {
					t.Fatalf("output: got\n%s\nwant the intercept held", out)
				}
				tc.end(fs)
				err := <-done
				if tc.wantErr != "" {
					if err == nil || err.Error() != tc.wantErr {
						t.Fatalf("got %v, want %q", err, tc.wantErr)
					}
				} else {
					if err != nil {
						t.Fatalf("got %v, want nil", err)
					}
					if got, want := out.String(), "the intercept of api ended elsewhere (leave or down)\n"; !strings.HasSuffix(got, want) {
						t.Errorf("output: got\n%s\nwant it to end with %q", got, want)
					}
				}
				if left := strings.Contains(strings.Join(fs.Calls(), ","), "leave"); left != tc.wantLeave {
					t.Errorf("session calls: got %q, want a leave: %v", fs.Calls(), tc.wantLeave)
				}
			})
		})
	}
}

// TestInterceptLostStopsServer: an intercept lost while the server runs
// stops the server and is an error with the session's reason.
func TestInterceptLostStopsServer(t *testing.T) {
	fs := &fakeSession{status: session.Status{Namespace: "ns"}}
	out := newSyncBuffer("routed: ")
	cfg := interceptConfig(t, fs, &fakeCluster{}, out)
	cfg.Replicate.NoMount = true
	cfg.Command = []string{"sh", "-c", `trap 'echo stopped; exit 0' INT; touch "$LISTEN"; while :; do sleep 0.05; done`}
	done := make(chan error, 1)
	go func() { done <- Intercept(t.Context(), cfg) }()
	select {
	case <-out.seen:
	case err := <-done:
		t.Fatalf("Intercept returned %v before it was routed; output:\n%s", err, out)
	}
	fs.lose("api", "restored deployment/api")
	if err := <-done; err == nil || err.Error() != "intercept of api lost: restored deployment/api" {
		t.Fatalf("got %v, want the loss", err)
	}
	if !strings.Contains(out.String(), "stopped\n") {
		t.Errorf("output: got\n%s\nwant the server stopped", out)
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

// TestInterceptEndedElsewhereStopsServer: leave from another terminal (or
// down) ends the intercept; the server has nothing to serve and is stopped.
func TestInterceptEndedElsewhereStopsServer(t *testing.T) {
	fs := &fakeSession{status: session.Status{Namespace: "ns"}}
	out := newSyncBuffer("routed: ")
	cfg := interceptConfig(t, fs, &fakeCluster{}, out)
	cfg.Replicate.NoMount = true
	cfg.Command = []string{"sh", "-c", `trap 'echo stopped; exit 3' INT; touch "$LISTEN"; while :; do sleep 0.05; done`}
	done := make(chan error, 1)
	go func() { done <- Intercept(t.Context(), cfg) }()
	select {
	case <-out.seen:
	case err := <-done:
		t.Fatalf("Intercept returned %v before it was routed; output:\n%s", err, out)
	}
	fs.endElsewhere("api")
	if err := <-done; err != nil {
		t.Fatalf("got %v, want nil (the server was stopped on purpose)", err)
	}
	if !strings.Contains(out.String(), "the intercept of api ended elsewhere (leave or down): stopping `sh -c") || !strings.Contains(out.String(), "stopped\n") {
		t.Errorf("output: got\n%s\nwant the end said and the server stopped", out)
	}
	if calls := strings.Join(fs.Calls(), ","); strings.Contains(calls, "leave") {
		t.Errorf("session calls: got %s, want no leave of its own", calls)
	}
}

// TestInterceptCtrlCDuringRollout: Ctrl-C while the session rolls out
// stops the server; the session undoes its part (its request ended).
func TestInterceptCtrlCDuringRollout(t *testing.T) {
	fs := &fakeSession{status: session.Status{Namespace: "ns"}, slow: true}
	out := newSyncBuffer("listens on 127.0.0.1:18080")
	cfg := interceptConfig(t, fs, &fakeCluster{}, out)
	cfg.Replicate.NoMount = true
	cfg.Command = []string{"sh", "-c", `trap 'echo stopped; exit 0' INT; touch "$LISTEN"; while :; do sleep 0.05; done`}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Intercept(ctx, cfg) }()
	select {
	case <-out.seen:
	case err := <-done:
		t.Fatalf("Intercept returned %v before the server listened; output:\n%s", err, out)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("got %v, want nil (the server's exit code 0)", err)
	}
	if !strings.Contains(out.String(), "interrupted: the session undoes the intercept; stopping `sh -c") || !strings.Contains(out.String(), "stopped\n") {
		t.Errorf("output: got\n%s\nwant the server stopped", out)
	}
	if d := cmp.Diff([]string{"status", "intercept api"}, fs.Calls()); d != "" {
		t.Errorf("session calls (-want +got):\n%s", d)
	}
}

// TestInterceptShowsState: while held, a reconnecting intercept and its
// return are said on the user's terminal.
func TestInterceptShowsState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := &fakeSession{status: session.Status{Namespace: "ns"}}
		out := newSyncBuffer("")
		cfg := interceptConfig(t, fs, &fakeCluster{}, out)
		listenNow(t, cfg)
		cfg.Replicate.NoMount = true
		done := make(chan error, 1)
		go func() { done <- Intercept(t.Context(), cfg) }()
		synctest.Wait()
		since := time.Date(2026, 12, 3, 7, 1, 2, 0, time.Local)
		fs.setState("api", session.InterceptReconnecting, "renewals failing: gateway unreachable", since)
		time.Sleep(pollInterval)
		synctest.Wait()
		fs.setState("api", session.InterceptActive, "", since)
		time.Sleep(pollInterval)
		synctest.Wait()
		fs.endElsewhere("api")
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		want := "press Ctrl-C to end the intercept\n" +
			"intercept of api reconnecting since 07:01:02: renewals failing: gateway unreachable\n" +
			"intercept of api active again\n" +
			"the intercept of api ended elsewhere (leave or down)\n"
		if got := out.String(); !strings.HasSuffix(got, want) {
			t.Errorf("output: got\n%s\nwant it to end with\n%s", got, want)
		}
	})
}

// TestServerLeftoverHoldsOutput: a server that exits while something it
// started keeps its output open still counts as exited, with its code.
func TestServerLeftoverHoldsOutput(t *testing.T) {
	out := newSyncBuffer("")
	srv, err := startServer([]string{"sh", "-c", `setsid sleep 3 & exit 5`}, nil, Stdio{Out: out, Err: out}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code, err := srv.wait(t.Context()); code != 5 || err != nil {
		t.Errorf("got %d, %v; want 5, nil", code, err)
	}
}

// TestInterceptRemovesDefaultMirror: the default volume mirror (it holds
// the pod's Secrets) is there while the intercept runs and gone when it
// ends; a --mount directory and a detached intercept's mirror stay.
func TestInterceptRemovesDefaultMirror(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mount     bool // --mount given
		detach    bool
		wantAfter bool
	}{
		{name: "default dir", wantAfter: false},
		{name: "--mount", mount: true, wantAfter: true},
		{name: "detached", detach: true, wantAfter: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("BRIDGETUN_STATE_DIR", t.TempDir())
			fs := &fakeSession{status: session.Status{Namespace: "ns"}}
			cfg := interceptConfig(t, fs, &fakeCluster{}, newSyncBuffer(""))
			listenNow(t, cfg)
			want := filepath.Join(session.DefaultPaths().Volumes, "ns", "api", "etc/api/level")
			if tc.mount {
				want = filepath.Join(cfg.Replicate.Mount, "etc/api/level")
			} else {
				cfg.Replicate.Mount = ""
			}
			seenDuring := false
			fs.onIntercept = func() { _, err := os.Stat(want); seenDuring = err == nil }
			cfg.Detach = tc.detach
			if !tc.detach {
				cfg.Command = []string{"true"}
			}
			if err := Intercept(t.Context(), cfg); err != nil {
				t.Fatal(err)
			}
			if !seenDuring {
				t.Errorf("%s missing while intercepting", want)
			}
			if _, err := os.Stat(want); (err == nil) != tc.wantAfter {
				t.Errorf("%s after the intercept: exists %v, want %v", want, err == nil, tc.wantAfter)
			}
		})
	}
}
