package devflow

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/bridgetun/bridgetun/session"
)

// TestInterceptAsInvoker: root acting for the user who ran sudo (here
// nobody) starts CMD as that user and leaves them the env file and the
// mirrored volumes.
func TestInterceptAsInvoker(t *testing.T) {
	testkit.RequireRoot(t)
	env := map[string]string{"SUDO_UID": "65534", "SUDO_GID": "65534", "SUDO_USER": "nobody"}
	u, err := invoker.FromEnv(func(k string) string { return env[k] }, 0)
	if err != nil {
		testkit.SkipUnlessCI(t, "no user nobody to act for: %v", err)
	}
	// A directory the user may use, as their home would be.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	fs := &fakeSession{status: session.Status{Namespace: "ns"}}
	out := newSyncBuffer("")
	cfg := interceptConfig(t, fs, &fakeCluster{}, out)
	mark, fifo := filepath.Join(dir, "listening"), filepath.Join(dir, "gate")
	if err := syscall.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	fs.onIntercept = func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = f.WriteString("go\n")
		f.Close()
	}
	cfg.Listening = func(context.Context, int) bool { _, err := os.Stat(mark); return err == nil }
	cfg.User = u
	cfg.Replicate.Env = []EnvVar{{"LISTEN", mark}, {"GATE", fifo}, {"OUT", filepath.Join(dir, "uid")}}
	cfg.Replicate.EnvFile = filepath.Join(dir, "api.env")
	cfg.Replicate.Mount = filepath.Join(dir, "vol")
	cfg.Command = []string{"sh", "-c", `id -u > "$OUT"; touch "$LISTEN"; read x < "$GATE"`}
	if err := Intercept(t.Context(), cfg); err != nil {
		t.Fatalf("intercept: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "uid"))
	if err != nil {
		t.Fatalf("CMD wrote no uid: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(b)); got != "65534" {
		t.Errorf("CMD ran as uid %s, want 65534", got)
	}
	for _, p := range []string{cfg.Replicate.EnvFile, cfg.Replicate.Mount, filepath.Join(cfg.Replicate.Mount, "etc/api/level")} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != 65534 {
			t.Errorf("%s: owner %s, want 65534", p, strconv.Itoa(int(uid)))
		}
	}
	if fi, err := os.Stat(cfg.Replicate.EnvFile); err == nil && fi.Mode().Perm() != 0o600 {
		t.Errorf("env file mode: got %o, want 600", fi.Mode().Perm())
	}
}

// TestRunAsInvoker: `sudo bridgetun run -- CMD` runs CMD as the user who
// ran sudo, with their HOME and USER.
func TestRunAsInvoker(t *testing.T) {
	testkit.RequireRoot(t)
	env := map[string]string{"SUDO_UID": "65534", "SUDO_GID": "65534", "SUDO_USER": "nobody"}
	u, err := invoker.FromEnv(func(k string) string { return env[k] }, 0)
	if err != nil {
		testkit.SkipUnlessCI(t, "no user nobody to act for: %v", err)
	}
	out := newSyncBuffer("")
	err = Run(t.Context(), RunConfig{
		Command: []string{"sh", "-c", `echo "$(id -u) $USER"`},
		Session: &fakeSession{status: session.Status{Namespace: "ns"}},
		User:    u,
		Stdio:   Stdio{Out: out, Err: out},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), "65534 nobody\n"; got != want {
		t.Errorf("output: got %q, want %q", got, want)
	}
}
