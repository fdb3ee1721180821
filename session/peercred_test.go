package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// dialHelperEnv makes the test binary a client: it asks the session at
// that socket for its status and prints the outcome (peerDial runs it as
// another uid).
const dialHelperEnv = "BRIDGETUN_TEST_DIAL_SOCKET"

func TestMain(m *testing.M) {
	if sock := os.Getenv(dialHelperEnv); sock != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := NewClient(sock)
		c.marker = ""
		if _, err := c.Status(ctx); err != nil {
			fmt.Println("error:", err)
			return
		}
		fmt.Println("ok")
		return
	}
	os.Exit(m.Run())
}

// helperBinary is a copy of the test binary that other uids may run (go
// test builds it in a 0700 directory).
func helperBinary(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(tmpLike(t), "session.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// peerDial runs the status call from a process of uid (gid = uid).
func peerDial(t *testing.T, bin, sock string, uid int) string {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = []string{dialHelperEnv + "=" + sock}
	runAs(cmd, uid)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper as uid %d: %v: %s", uid, err, out)
	}
	return strings.TrimSpace(string(out))
}

// tmpLike is a temp dir every uid may create in, like /tmp (t.TempDir
// and its parent are root's 0700).
func tmpLike(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return dir
}

// openUp lets every uid reach path (the dirs above it and the socket), so
// that only the peer-credential check can refuse.
func openUp(t *testing.T, sock string) {
	t.Helper()
	if err := os.Chmod(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
}

// A session run by root for nobody (sudo) makes its socket and directory
// nobody's and answers nobody and root; a third uid is refused by its peer
// credentials, naming the owner, even with the socket's mode opened up.
func TestAPIPeerCredentials(t *testing.T) {
	testkit.RequireRoot(t)
	const nobody, stranger = 65534, 4242
	sock := filepath.Join(tmpLike(t), "run", "bridgetun.sock")
	owner := invoker.ActingFor(nobody, nobody, "nobody", "", nil)
	a, err := listenAPI(Paths{Socket: sock, Owner: owner}, apiHandlers{status: func() Status { return Status{State: "connected"} }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for _, p := range []string{sock, filepath.Dir(sock)} {
		if got := invoker.Owner(p); got != nobody {
			t.Errorf("%s: owner %d, want %d", p, got, nobody)
		}
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: got %v %v, want 0600", fi.Mode(), err)
	}
	if _, err := NewClient(sock).Status(t.Context()); err != nil {
		t.Errorf("root: got %v, want accepted", err)
	}
	openUp(t, sock)
	bin := helperBinary(t)
	if got := peerDial(t, bin, sock, nobody); got != "ok" {
		t.Errorf("owner (uid %d): got %q, want accepted", nobody, got)
	}
	want := "error: refused: the session on this machine belongs to nobody (uid 65534); only nobody and root can use it"
	if got := peerDial(t, bin, sock, stranger); got != want {
		t.Errorf("uid %d: got %q, want %q", stranger, got, want)
	}
}

// A session whose socket is missing here, while a root-held one of another
// user runs on this machine, is refused naming that user — not "not up".
func TestClientNamesForeignOwner(t *testing.T) {
	testkit.RequireRoot(t) // the marker must be root's to be trusted
	dir := t.TempDir()
	marker := filepath.Join(dir, "owner.json")
	write := func(pid int) {
		t.Helper()
		if err := os.WriteFile(marker, fmt.Appendf(nil, `{"uid":1001,"user":"alice","pid":%d,"socket":"/x/bridgetun.sock"}`, pid), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(os.Getpid())
	c := NewClient(filepath.Join(dir, "missing.sock"))
	c.marker = marker
	for _, tc := range []struct {
		name string
		uid  int
		want string
	}{
		{"another user", 1002, "refused: the session on this machine belongs to alice (uid 1001); only alice and root can use it"},
		{"the owner", 1001, ErrNotRunning.Error()},
		{"root", 0, ErrNotRunning.Error()},
	} {
		c.uid = tc.uid
		_, err := c.Status(t.Context())
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
	c.uid = 1002
	write(deadPID(t))
	if _, err := c.Status(t.Context()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("stale marker: got %v, want ErrNotRunning", err)
	}
	write(os.Getpid())
	if err := os.Chown(marker, 1001, 1001); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status(t.Context()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("marker not written by root: got %v, want it ignored", err)
	}
}

// A root-held session leaves a world-readable marker naming its owner and
// removes it when it closes.
func TestAPIMarker(t *testing.T) {
	testkit.RequireRoot(t)
	dir := tmpLike(t)
	p := Paths{Socket: filepath.Join(dir, "run", "bridgetun.sock"), Marker: filepath.Join(dir, "m", "session.json"),
		Owner: invoker.ActingFor(4242, 4242, "alice", "", nil)}
	a, err := listenAPI(p, apiHandlers{status: func() Status { return Status{} }})
	if err != nil {
		t.Fatal(err)
	}
	m, ok := readMarker(p.Marker)
	if !ok || m.UID != 4242 || m.User != "alice" || m.PID != os.Getpid() || m.Socket != p.Socket {
		t.Errorf("marker: got %+v %v, want alice's with this pid and socket", m, ok)
	}
	if fi, err := os.Stat(p.Marker); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("marker mode: got %v %v, want 0644", fi.Mode(), err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{p.Marker, p.Socket} {
		if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Close: got %v, want removed", f, err)
		}
	}
}

// Under sudo the state files (key, leftovers record) are the user's.
func TestStateFilesOwnedByUser(t *testing.T) {
	testkit.RequireRoot(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	p := Paths{StateDir: filepath.Join(home, ".config", "bridgetun"), Owner: invoker.ActingFor(65534, 65534, "nobody", home, nil)}
	if _, err := p.loadOrCreateKey(); err != nil {
		t.Fatal(err)
	}
	if err := p.writeLeftovers(leftovers{PID: os.Getpid()}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(home, ".config"), p.StateDir, p.keyFile(), p.leftoversFile()} {
		if got := invoker.Owner(f); got != 65534 {
			t.Errorf("%s: owner %s, want 65534", f, strconv.Itoa(got))
		}
	}
}
