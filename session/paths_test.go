package session

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// pathEnv clears what would leak the test machine's own dirs into paths.
func pathEnv(t *testing.T, tmp string) {
	t.Setenv("BRIDGETUN_STATE_DIR", "")
	t.Setenv("TMPDIR", tmp)
	for _, k := range []string{"XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"} {
		t.Setenv(k, "")
	}
	old := defaultMarker
	defaultMarker = filepath.Join(t.TempDir(), "marker.json")
	t.Cleanup(func() { defaultMarker = old })
}

// Under sudo the paths are the invoking user's: derived from their home
// (sudo reset $HOME and XDG_*), never root's; root's own state (the
// resolv.conf backup) stays out of their reach.
func TestUserPathsSudo(t *testing.T) {
	tmp := t.TempDir()
	pathEnv(t, tmp)
	home := filepath.Join(t.TempDir(), "alice")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	const uid = 4000123 // no /run/user/UID: the socket falls back to TMPDIR
	u := invoker.ActingFor(uid, uid, "alice", home, nil)
	p := UserPaths(u)
	want := Paths{
		StateDir:  filepath.Join(home, ".config", "bridgetun"),
		LogDir:    filepath.Join(home, ".local", "state", "bridgetun"),
		Volumes:   filepath.Join(home, ".local", "state", "bridgetun", "volumes"),
		Socket:    filepath.Join(tmp, fmt.Sprintf("bridgetun-%d", uid), "bridgetun.sock"),
		SystemDir: systemDirIfRoot(),
		Marker:    defaultMarker,
		Owner:     u,
	}
	if p != want {
		t.Errorf("got  %+v\nwant %+v", p, want)
	}
	if p.SystemDir != "" && strings.HasPrefix(p.SystemDir, home) {
		t.Errorf("system dir %s is in the user's reach", p.SystemDir)
	}
}

// systemDirIfRoot is where a root session keeps its own state.
func systemDirIfRoot() string {
	if os.Geteuid() == 0 {
		return systemStateDir
	}
	return ""
}

// A user without a usable home (nobody's is /nonexistent) gets everything
// under a private $TMPDIR/bridgetun-UID.
func TestUserPathsNoHome(t *testing.T) {
	tmp := t.TempDir()
	pathEnv(t, tmp)
	t.Setenv("SUDO_UID", "65534")
	t.Setenv("SUDO_GID", "65534")
	p := DefaultPaths()
	dir := filepath.Join(tmp, "bridgetun-65534")
	if p.Owner == nil || p.Owner.UID != 65534 || !p.Owner.Acting() {
		t.Fatalf("owner: got %+v, want nobody acted for", p.Owner)
	}
	if p.StateDir != dir || p.LogDir != dir || p.Volumes != filepath.Join(dir, "volumes") || p.Socket != filepath.Join(dir, "bridgetun.sock") {
		t.Errorf("got %+v, want all under %s", p, dir)
	}
}

// BRIDGETUN_STATE_DIR still moves everything (tests, several sessions).
func TestUserPathsStateDirOverride(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("BRIDGETUN_STATE_DIR", dir)
	p := UserPaths(invoker.Self())
	if p.StateDir != dir || p.SystemDir != dir || p.Socket != filepath.Join(dir, "bridgetun.sock") || p.LogDir != filepath.Join(dir, "logs") {
		t.Errorf("got %+v, want everything under %s", p, dir)
	}
}

// The user's own commands find the socket root made for them although
// their TMPDIR differs from the one sudo left root (it resets TMPDIR): the
// candidates include /tmp.
func TestUserPathsFindSocketInTmp(t *testing.T) {
	pathEnv(t, t.TempDir())
	uid := 4000000 + os.Getpid()%100000 // no such user: nobody else's dir in /tmp
	dir := filepath.Join("/tmp", fmt.Sprintf("bridgetun-%d", uid))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "bridgetun.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	u := invoker.ActingFor(uid, uid, "alice", "", nil)
	if got := UserPaths(u).Socket; got != sock {
		t.Errorf("socket: got %s, want the live one in /tmp, %s", got, sock)
	}
}

// With no socket in any candidate place, a root-held session's marker
// says where it is: to its owner and to root.
func TestUserPathsMarker(t *testing.T) {
	testkit.RequireRoot(t) // the marker must be root's to be trusted
	pathEnv(t, t.TempDir())
	const uid = 4000124
	sock := filepath.Join(t.TempDir(), "elsewhere.sock")
	if err := os.WriteFile(defaultMarker, fmt.Appendf(nil, `{"uid":%d,"user":"alice","pid":%d,"socket":%q}`, uid, os.Getpid(), sock), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := UserPaths(invoker.ActingFor(uid, uid, "alice", "", nil)).Socket; got != sock {
		t.Errorf("owner's socket: got %s, want the marker's %s", got, sock)
	}
}

// Without root, what a crashed TUN session left is refused with the
// remedy, and nothing is touched (record and socket stay for sudo).
func TestRepairLeftoversNeedsRoot(t *testing.T) {
	paths := testPaths(t)
	if err := os.MkdirAll(filepath.Dir(paths.Socket), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(paths.Socket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := paths.writeLeftovers(leftovers{PID: deadPID(t), TUN: "bt0", Socket: paths.Socket}); err != nil {
		t.Fatal(err)
	}
	old := geteuid
	geteuid = func() int { return 1001 }
	t.Cleanup(func() { geteuid = old })
	deleted := false
	_, err := paths.repairLeftovers(func(string) error { deleted = true; return nil })
	want := "a crashed session left TUN device bt0, its routes and DNS settings, which only root can remove: run `sudo bridgetun down`"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	if deleted {
		t.Error("tried to delete the TUN without root")
	}
	for _, f := range []string{paths.leftoversFile(), paths.Socket} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("%s: got %v, want it kept for `sudo bridgetun down`", f, err)
		}
	}
}
