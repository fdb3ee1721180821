package invoker

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// nobody is in every Debian user database: uid and gid 65534, home
// /nonexistent.
const nobody = 65534

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     func(string) string
		euid    int
		acting  bool
		uid     int
		gid     int
		errLike string
	}{
		{name: "sudo", env: env("SUDO_UID", "65534", "SUDO_GID", "65534", "SUDO_USER", "nobody"), acting: true, uid: nobody, gid: nobody},
		{name: "sudo gid wins over passwd", env: env("SUDO_UID", "65534", "SUDO_GID", "4242"), acting: true, uid: nobody, gid: 4242},
		{name: "pkexec", env: env("PKEXEC_UID", "65534"), acting: true, uid: nobody, gid: nobody},
		{name: "sudo by root is root", env: env("SUDO_UID", "0", "SUDO_GID", "0"), uid: 0},
		{name: "no sudo", env: env(), uid: 0},
		{name: "not root ignores SUDO_UID", env: env("SUDO_UID", "65534"), euid: 1234, uid: 1234},
		{name: "bad SUDO_UID", env: env("SUDO_UID", "alice"), errLike: `SUDO_UID="alice" is not a user or group id`},
		{name: "negative SUDO_UID", env: env("SUDO_UID", "-5"), errLike: `SUDO_UID="-5"`},
		{name: "bad SUDO_GID", env: env("SUDO_UID", "65534", "SUDO_GID", "x"), errLike: `SUDO_GID="x"`},
		{name: "bad PKEXEC_UID", env: env("PKEXEC_UID", "1e3"), errLike: `PKEXEC_UID="1e3"`},
		{name: "unknown user", env: env("SUDO_UID", "3999999"), errLike: "user id 3999999 (SUDO_UID) not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := FromEnv(tc.env, tc.euid)
			if tc.errLike != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errLike) {
					t.Fatalf("got error %v, want one containing %q", err, tc.errLike)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.Acting() != tc.acting || u.UID != tc.uid {
				t.Fatalf("got acting %v uid %d, want %v %d", u.Acting(), u.UID, tc.acting, tc.uid)
			}
			if !tc.acting {
				if u.Credential() != nil {
					t.Errorf("got credential %+v when not acting, want nil", u.Credential())
				}
				return
			}
			if u.GID != tc.gid || u.Name != "nobody" || u.Home != "/nonexistent" {
				t.Errorf("got gid %d name %q home %q, want %d nobody /nonexistent", u.GID, u.Name, u.Home, tc.gid)
			}
			c := u.Credential()
			if c == nil || c.Uid != uint32(tc.uid) || c.Gid != uint32(tc.gid) || !slices.Contains(c.Groups, uint32(tc.gid)) {
				t.Errorf("got credential %+v, want uid %d gid %d with the gid among the groups", c, tc.uid, tc.gid)
			}
			// A home that is a placeholder gives no XDG dirs: callers fall
			// back to a private temp dir.
			if d := u.ConfigDir(); d != "" {
				t.Errorf("got config dir %q for home /nonexistent, want none", d)
			}
		})
	}
}

func TestParsePasswd(t *testing.T) {
	u, err := parsePasswd(1001, []byte("alice:x:1001:1002:Alice,,,:/home/alice:/bin/bash\n"))
	if err != nil {
		t.Fatal(err)
	}
	if u.Name != "alice" || u.GID != 1002 || u.Home != "/home/alice" {
		t.Errorf("got %+v, want alice gid 1002 home /home/alice", u)
	}
	for _, line := range []string{"", "alice:x:1002:1002::/home/alice:/bin/sh", "alice:x:1001:g::/h:/bin/sh", "alice:x:1001"} {
		if _, err := parsePasswd(1001, []byte(line)); err == nil {
			t.Errorf("parsePasswd(%q): got no error, want one", line)
		}
	}
}

func TestEnv(t *testing.T) {
	u := &User{UID: 1001, GID: 1001, Name: "alice", Home: "/home/alice", acting: true}
	got := u.Env([]string{"HOME=/root", "PATH=/usr/bin", "SUDO_UID=1001", "USER=root", "KUBECONFIG=/k"})
	want := []string{"PATH=/usr/bin", "KUBECONFIG=/k", "HOME=/home/alice", "USER=alice", "LOGNAME=alice"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	u.acting = false
	if got := u.Env([]string{"HOME=/root"}); !slices.Equal(got, []string{"HOME=/root"}) {
		t.Errorf("not acting: got %q, want the environment unchanged", got)
	}
}

func TestXDGDirs(t *testing.T) {
	home := t.TempDir()
	u := &User{UID: os.Geteuid(), Home: home, getenv: env("XDG_STATE_HOME", "relative/is/ignored")}
	if got, want := u.ConfigDir(), filepath.Join(home, ".config"); got != want {
		t.Errorf("config dir: got %q, want %q", got, want)
	}
	if got, want := u.StateDir(), filepath.Join(home, ".local", "state"); got != want {
		t.Errorf("state dir: got %q, want %q", got, want)
	}
	u.getenv = env("XDG_STATE_HOME", "/x/state", "XDG_RUNTIME_DIR", "/x/run")
	if got := u.StateDir(); got != "/x/state" {
		t.Errorf("state dir: got %q, want $XDG_STATE_HOME", got)
	}
	if got := u.RuntimeDir(); got != "/x/run" {
		t.Errorf("runtime dir: got %q, want $XDG_RUNTIME_DIR", got)
	}
}

// Under sudo, a kept variable counts only when its directory is the
// user's: root's own XDG_RUNTIME_DIR is not theirs.
func TestGetenvActing(t *testing.T) {
	testkit.RequireRoot(t)
	dir := t.TempDir()
	theirs := filepath.Join(dir, "theirs")
	if err := os.Mkdir(theirs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	u := &User{UID: nobody, GID: nobody, acting: true, getenv: env("XDG_RUNTIME_DIR", dir, "XDG_STATE_HOME", theirs)}
	if got := u.Getenv("XDG_RUNTIME_DIR"); got != "" {
		t.Errorf("root's dir: got %q, want it ignored", got)
	}
	if got := u.Getenv("XDG_STATE_HOME"); got != theirs {
		t.Errorf("their dir: got %q, want %q", got, theirs)
	}
}

// sharedDir is a temp dir others can enter (t.TempDir and its parent are
// 0700 root's).
func sharedDir(t *testing.T) string {
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Do switches only this goroutine's thread: inside, root's file is out of
// reach and new files are the user's; meanwhile another goroutine still
// reads it as root, and afterwards so does this one.
func TestDo(t *testing.T) {
	testkit.RequireRoot(t)
	dir := sharedDir(t)
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("root's"), 0o600); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(dir, "theirs")
	if err := os.Mkdir(theirs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	u, err := FromEnv(env("SUDO_UID", strconv.Itoa(nobody)), 0)
	if err != nil {
		t.Fatal(err)
	}
	other := make(chan error)
	err = u.Do(func() error {
		if _, err := os.ReadFile(secret); !errors.Is(err, os.ErrPermission) {
			t.Errorf("read root's 0600 file as the user: got %v, want permission denied", err)
		}
		if err := os.Mkdir(filepath.Join(dir, "not-theirs"), 0o700); !errors.Is(err, os.ErrPermission) {
			t.Errorf("mkdir in root's dir as the user: got %v, want permission denied", err)
		}
		go func() { _, err := os.ReadFile(secret); other <- err }()
		if err := <-other; err != nil {
			t.Errorf("another goroutine during Do: got %v, want root's rights", err)
		}
		return os.WriteFile(filepath.Join(theirs, "made"), nil, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := Owner(filepath.Join(theirs, "made")); got != nobody {
		t.Errorf("file made in Do: owner %d, want %d", got, nobody)
	}
	if _, err := os.ReadFile(secret); err != nil {
		t.Errorf("after Do: got %v, want root's rights back", err)
	}
}

func TestWriteFileReplacesSymlink(t *testing.T) {
	testkit.RequireRoot(t)
	dir := sharedDir(t)
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(dir, "theirs")
	if err := os.Mkdir(theirs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(theirs, "env")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	u, err := FromEnv(env("SUDO_UID", strconv.Itoa(nobody)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.WriteFile(link, []byte("A=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Errorf("symlink target: got %q, want it untouched", b)
	}
	fi, err := os.Lstat(link)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSymlink != 0 || fi.Mode().Perm() != 0o600 || ownerOf(fi) != nobody {
		t.Errorf("written file: mode %v owner %d, want a regular 0600 file of uid %d", fi.Mode(), ownerOf(fi), nobody)
	}
	if f, err := u.OpenFile(filepath.Join(theirs, "log"), os.O_CREATE|os.O_WRONLY, 0o600); err != nil {
		t.Errorf("OpenFile: %v", err)
	} else {
		f.Close()
	}
	if err := os.Symlink(target, filepath.Join(theirs, "log2")); err != nil {
		t.Fatal(err)
	}
	if _, err := u.OpenFile(filepath.Join(theirs, "log2"), os.O_APPEND|os.O_WRONLY, 0o600); !errors.Is(err, syscall.ELOOP) {
		t.Errorf("OpenFile through a symlink: got %v, want ELOOP", err)
	}
}

func TestPrivateDir(t *testing.T) {
	self, err := FromEnv(os.Getenv, os.Geteuid())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fresh := filepath.Join(dir, "a", "bridgetun-1")
	if err := self.PrivateDir(fresh); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("fresh dir: got %v %v, want mode 0700", fi.Mode(), err)
	}
	if err := os.Chmod(fresh, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := self.PrivateDir(fresh); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(fresh); fi.Mode().Perm() != 0o700 {
		t.Errorf("loose mode: got %v, want tightened to 0700", fi.Mode())
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(fresh, link); err != nil {
		t.Fatal(err)
	}
	if err := self.PrivateDir(link); err == nil || !strings.Contains(err.Error(), "is a symlink") {
		t.Errorf("symlink: got %v, want refused", err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := self.PrivateDir(file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("file: got %v, want refused", err)
	}
}

// In a shared temp dir someone else may have made the directory first.
func TestPrivateDirForeignOwner(t *testing.T) {
	testkit.RequireRoot(t)
	dir := sharedDir(t)
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil { // like /tmp
		t.Fatal(err)
	}
	foreign := filepath.Join(dir, "bridgetun-65534")
	if err := os.Mkdir(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(foreign, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	for _, euid := range []int{0, nobody} {
		u := &User{UID: euid, GID: euid, Name: "x", acting: euid != 0, getenv: env()}
		if euid != 0 {
			u.Groups = []int{nobody}
		}
		err := u.PrivateDir(foreign)
		if err == nil || !strings.Contains(err.Error(), "belongs to uid 4242") {
			t.Errorf("uid %d: got %v, want refused naming the owner", euid, err)
		}
	}
	// Made by root acting for the user, the directory is the user's.
	u, err := FromEnv(env("SUDO_UID", strconv.Itoa(nobody)), 0)
	if err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(dir, "bridgetun-mine")
	if err := u.PrivateDir(mine); err != nil {
		t.Fatal(err)
	}
	if got := Owner(mine); got != nobody {
		t.Errorf("owner: got %d, want %d", got, nobody)
	}
}
