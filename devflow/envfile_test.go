package devflow

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bridgetun/bridgetun/session"
)

func TestWritePrivateFile(t *testing.T) {
	t.Run("new file is 0600", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), ".env")
		if err := writePrivateFile(p, []byte("A=\"1\"\n")); err != nil {
			t.Fatal(err)
		}
		checkFile(t, p, "A=\"1\"\n")
	})
	t.Run("an existing wider file is narrowed and replaced", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), ".env")
		if err := os.WriteFile(p, []byte("OLD=\"a much longer old content\"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := writePrivateFile(p, []byte("A=\"1\"\n")); err != nil {
			t.Fatal(err)
		}
		checkFile(t, p, "A=\"1\"\n")
	})
	t.Run("a symlink is refused, its target untouched", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "target")
		if err := os.WriteFile(target, []byte("keep\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, ".env")
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		err := writePrivateFile(p, []byte("SECRET=\"x\"\n"))
		if err == nil || !strings.Contains(err.Error(), p+" is a symlink: refusing to write secrets through it") {
			t.Fatalf("got %v, want a refusal naming the symlink", err)
		}
		if b, _ := os.ReadFile(target); string(b) != "keep\n" {
			t.Errorf("symlink target: got %q, want it untouched", b)
		}
		if fi, err := os.Lstat(p); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("the symlink itself: got %v, %v; want it left as it was", fi.Mode(), err)
		}
	})
	t.Run("a dangling symlink is refused", func(t *testing.T) {
		dir := t.TempDir()
		p := filepath.Join(dir, ".env")
		if err := os.Symlink(filepath.Join(dir, "nowhere"), p); err != nil {
			t.Fatal(err)
		}
		if err := writePrivateFile(p, []byte("SECRET=\"x\"\n")); err == nil || !strings.Contains(err.Error(), "is a symlink") {
			t.Fatalf("got %v, want a refusal", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "nowhere")); err == nil {
			t.Error("the dangling symlink's target was created")
		}
	})
	t.Run("not a regular file", func(t *testing.T) {
		if err := writePrivateFile(t.TempDir(), []byte("x")); err == nil {
			t.Fatal("got nil, want an error for a directory")
		}
	})
}

func checkFile(t *testing.T, p, want string) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("mode: got %o, want 600", got)
	}
	if b, _ := os.ReadFile(p); string(b) != want {
		t.Errorf("content: got %q, want %q", b, want)
	}
}

// The intercept refuses an env file that is a symlink before anything
// reaches the session.
func TestInterceptEnvFileSymlink(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, ".env")
	if err := os.Symlink(filepath.Join(dir, "elsewhere"), p); err != nil {
		t.Fatal(err)
	}
	fs := &fakeSession{status: session.Status{Namespace: "ns"}}
	cfg := interceptConfig(t, fs, &fakeCluster{}, newSyncBuffer(""))
	listenNow(t, cfg)
	cfg.Replicate.EnvFile = p
	err := Intercept(t.Context(), cfg)
	if err == nil || !strings.HasPrefix(err.Error(), "--env-file "+p+": "+p+" is a symlink") {
		t.Fatalf("got %v, want the refusal", err)
	}
	if calls := fs.Calls(); len(calls) != 1 {
		t.Errorf("session calls: got %q, want only the status", calls)
	}
}
