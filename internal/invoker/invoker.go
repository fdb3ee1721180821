// Package invoker says whom a bridgetun command acts for: the user who ran
// `sudo bridgetun …` (SUDO_UID, SUDO_GID, SUDO_USER) or `pkexec bridgetun …`
// (PKEXEC_UID) when this process is root, else the process's own user.
//
// Root is kept for what needs it (TUN, routes, DNS configuration);
// everything else is done as the invoking user. Look the user up once, in
// cmd/, and pass it down:
//
//	u, err := invoker.Current()
//	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.Credential()} // nil unless acting: CMD runs as the user
//	err = u.WriteFile(envFile, data, 0o600)  // written as the user, replacing (never following) a symlink
//	f, err := u.OpenFile(log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600) // as the user, O_NOFOLLOW
//	err = u.MkdirAll(dir, 0o700)             // created as the user, so owned by them
//	err = u.Chown(path)                      // after root wrote path itself (e.g. in another goroutine)
//	err = u.Do(func() error { … })           // any file-system calls with the user's rights
//
// When the process is not acting for someone else (no sudo, or root
// itself), every method does the plain thing: Credential is nil, Chown a
// no-op, Do just calls f.
package invoker

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// User is the user a command acts for.
type User struct {
	UID, GID int
	Groups   []int  // supplementary group ids (Credential, Do); at least GID
	Name     string // login name; the uid in decimal when unknown
	Home     string // home directory; "" when unknown
	acting   bool   // root acting for this (other) user
	getenv   func(string) string
}

// Current is the user this process acts for, from its own environment.
func Current() (*User, error) { return FromEnv(os.Getenv, os.Geteuid()) }

// Self is this process's own user, whatever sudo says (never acting).
func Self() *User { return self(os.Getenv, os.Geteuid()) }

// ActingFor is root acting for a user known by other means than sudo's
// variables (tests; later a privileged helper told whom it serves): uid,
// gid, name and home as given, getenv their environment (nil = none).
func ActingFor(uid, gid int, name, home string, getenv func(string) string) *User {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	return &User{UID: uid, GID: gid, Groups: []int{gid}, Name: name, Home: home, acting: true, getenv: getenv}
}

// FromEnv is Current for a given environment and effective uid (tests
// simulate sudo with it). A set but malformed SUDO_UID, SUDO_GID or
// PKEXEC_UID is an error, and so is a sudo user missing from the user
// database: acting as root by mistake would leave root's files in the
// user's place. Outside root, SUDO_* are ignored (`sudo -u bob` runs as bob).
func FromEnv(getenv func(string) string, euid int) (*User, error) {
	if euid != 0 {
		return self(getenv, euid), nil
	}
	uid, gid, from, err := invokerIDs(getenv)
	if err != nil {
		return nil, err
	}
	if uid <= 0 {
		return self(getenv, euid), nil
	}
	u, err := lookup(uid)
	if err != nil {
		return nil, fmt.Errorf("user id %d (%s) not found in the user database: %w", uid, from, err)
	}
	u.acting, u.getenv = true, getenv
	if gid >= 0 {
		u.GID = gid
	}
	if !containsInt(u.Groups, u.GID) {
		u.Groups = append([]int{u.GID}, u.Groups...)
	}
	return u, nil
}

// invokerIDs parses the sudo or pkexec variables; uid is -1 when neither
// is set, gid -1 when not given.
func invokerIDs(getenv func(string) string) (uid, gid int, from string, err error) {
	uid, gid = -1, -1
	parse := func(name string) (int, error) {
		v := getenv(name)
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n >= 1<<32-1 {
			return -1, fmt.Errorf("%s=%q is not a user or group id: run bridgetun through sudo or pkexec unchanged", name, v)
		}
		return n, nil
	}
	switch {
	case getenv("SUDO_UID") != "":
		from = "SUDO_UID"
		if uid, err = parse("SUDO_UID"); err != nil {
			return -1, -1, from, err
		}
		if getenv("SUDO_GID") != "" {
			if gid, err = parse("SUDO_GID"); err != nil {
				return -1, -1, from, err
			}
		}
	case getenv("PKEXEC_UID") != "":
		from = "PKEXEC_UID"
		if uid, err = parse("PKEXEC_UID"); err != nil {
			return -1, -1, from, err
		}
	}
	return uid, gid, from, nil
}

// self is the process's own user; lookups that fail leave the name as the
// uid and the home as $HOME (containers run with uids nobody listed).
func self(getenv func(string) string, euid int) *User {
	u := &User{UID: euid, GID: os.Getegid(), Name: strconv.Itoa(euid), getenv: getenv}
	if lu, err := lookup(euid); err == nil {
		u.Name, u.Home, u.Groups = lu.Name, lu.Home, lu.Groups
	}
	if h := getenv("HOME"); h != "" {
		u.Home = h
	}
	if !containsInt(u.Groups, u.GID) {
		u.Groups = append([]int{u.GID}, u.Groups...)
	}
	return u
}

// lookup reads the user database: os/user (which without cgo reads only
// /etc/passwd and /etc/group), then getent, which also asks NSS (LDAP,
// sssd).
func lookup(uid int) (*User, error) {
	if lu, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		gid, _ := strconv.Atoi(lu.Gid)
		u := &User{UID: uid, GID: gid, Name: lu.Username, Home: lu.HomeDir}
		if ids, err := lu.GroupIds(); err == nil {
			for _, s := range ids {
				if g, err := strconv.Atoi(s); err == nil && !containsInt(u.Groups, g) {
					u.Groups = append(u.Groups, g)
				}
			}
		}
		return u, nil
	}
	out, err := exec.Command("getent", "passwd", strconv.Itoa(uid)).Output()
	if err != nil {
		return nil, fmt.Errorf("getent passwd %d: %w", uid, err)
	}
	return parsePasswd(uid, out)
}

// parsePasswd reads one passwd line: name:x:uid:gid:gecos:home:shell.
func parsePasswd(uid int, line []byte) (*User, error) {
	f := strings.Split(string(bytes.TrimSpace(line)), ":")
	if len(f) < 7 || f[2] != strconv.Itoa(uid) {
		return nil, fmt.Errorf("no passwd entry for uid %d", uid)
	}
	gid, err := strconv.Atoi(f[3])
	if err != nil {
		return nil, fmt.Errorf("passwd entry for uid %d: bad gid %q", uid, f[3])
	}
	return &User{UID: uid, GID: gid, Name: f[0], Home: f[5], Groups: []int{gid}}, nil
}

// Acting reports whether this process is root acting for another user.
func (u *User) Acting() bool { return u.acting }

// String names the user for messages: "alice (uid 1001)".
func (u *User) String() string { return fmt.Sprintf("%s (uid %d)", u.Name, u.UID) }

// Credential is what exec.Cmd.SysProcAttr.Credential needs to run a
// process as the user (their uid, gid and groups); nil when not acting, so
// the child simply inherits this process's identity.
func (u *User) Credential() *Credential {
	if !u.acting {
		return nil
	}
	groups := make([]uint32, len(u.Groups))
	for i, g := range u.Groups {
		groups[i] = uint32(g)
	}
	return &Credential{Uid: uint32(u.UID), Gid: uint32(u.GID), Groups: groups}
}

// Env is the environment a process started for the user gets: this
// process's, with HOME, USER and LOGNAME set to the user's when acting
// (sudo may have left root's) and the sudo variables removed.
func (u *User) Env(environ []string) []string {
	if !u.acting {
		return environ
	}
	out := make([]string, 0, len(environ)+3)
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "HOME", "USER", "LOGNAME", "SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND", "PKEXEC_UID":
			continue
		}
		out = append(out, kv)
	}
	if u.Home != "" {
		out = append(out, "HOME="+u.Home)
	}
	return append(out, "USER="+u.Name, "LOGNAME="+u.Name)
}

// Getenv is the user's own value of an environment variable, "" when it
// cannot be trusted to be theirs: under sudo a path kept from the caller
// (`sudo -E`, env_keep) is used only when it exists and belongs to the
// user, so root's XDG_RUNTIME_DIR after `sudo -i` is not mistaken for it.
func (u *User) Getenv(key string) string {
	v := u.getenv(key)
	if v == "" || !u.acting {
		return v
	}
	if fi, err := os.Stat(v); err == nil && ownerOf(fi) == u.UID {
		return v
	}
	return ""
}

// ConfigDir is $XDG_CONFIG_HOME, else ~/.config; "" without a home.
func (u *User) ConfigDir() string { return u.xdg("XDG_CONFIG_HOME", ".config") }

// StateDir is $XDG_STATE_HOME, else ~/.local/state; "" without a home.
func (u *User) StateDir() string { return u.xdg("XDG_STATE_HOME", filepath.Join(".local", "state")) }

// RuntimeDir is $XDG_RUNTIME_DIR, else /run/user/UID when that is a
// directory of the user's (systemd-logind makes it at login); "" when
// neither. The user's own commands and root acting for them agree on it,
// whether or not sudo kept the variable.
func (u *User) RuntimeDir() string {
	if d := u.Getenv("XDG_RUNTIME_DIR"); d != "" && filepath.IsAbs(d) {
		return d
	}
	d := filepath.Join("/run/user", strconv.Itoa(u.UID))
	if fi, err := os.Stat(d); err == nil && fi.IsDir() && ownerOf(fi) == u.UID {
		return d
	}
	return ""
}

// TempDirs are where a per-user fallback directory may be: this
// process's temp dir first, then /tmp (sudo resets TMPDIR, so root acting
// for a user and the user's own commands look at both).
func (u *User) TempDirs() []string {
	dirs := []string{os.TempDir()}
	if dirs[0] != "/tmp" {
		dirs = append(dirs, "/tmp")
	}
	return dirs
}

func (u *User) xdg(env, under string) string {
	if d := u.Getenv(env); d != "" && filepath.IsAbs(d) {
		return d
	}
	if !usableHome(u.Home) {
		return ""
	}
	return filepath.Join(u.Home, under)
}

// usableHome rules out the placeholders system users get (/, /nonexistent).
func usableHome(h string) bool {
	if h == "" || h == "/" || !filepath.IsAbs(h) {
		return false
	}
	fi, err := os.Stat(h)
	return err == nil && fi.IsDir()
}

// MkdirAll creates path and its missing parents as the user (so they are
// the user's), with perm.
func (u *User) MkdirAll(path string, perm os.FileMode) error {
	return u.Do(func() error { return os.MkdirAll(path, perm) })
}

// OpenFile opens name as the user, never through a symlink at name
// (O_NOFOLLOW is added where the OS has it).
func (u *User) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	var f *os.File
	err := u.Do(func() error {
		var err error
		f, err = os.OpenFile(name, flag|oNoFollow, perm)
		return err
	})
	return f, err
}

// WriteFile replaces name with data, mode perm, as the user: it writes a
// new file beside name and renames it over name, so a symlink at name is
// replaced, never followed, and a reader sees the old or the new content.
func (u *User) WriteFile(name string, data []byte, perm os.FileMode) error {
	return u.Do(func() error {
		tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
		if err := tmp.Chmod(perm); err != nil {
			tmp.Close()
			return err
		}
		if _, err := tmp.Write(data); err != nil {
			tmp.Close()
			return err
		}
		if err := tmp.Close(); err != nil {
			return err
		}
		return os.Rename(tmp.Name(), name)
	})
}

// Chown gives path (not what a symlink at path points to) to the user;
// a no-op when not acting.
func (u *User) Chown(path string) error {
	if !u.acting {
		return nil
	}
	if err := os.Lchown(path, u.UID, u.GID); err != nil {
		return fmt.Errorf("give %s to %s: %w", path, u, err)
	}
	return nil
}

// PrivateDir makes path a directory only the user can use (0700, theirs),
// creating it and its parents as the user when missing. It refuses a path
// that is a symlink or belongs to someone else — in a shared temp dir
// another user may have made it first — and tightens a mode that lets
// others in.
func (u *User) PrivateDir(path string) error {
	return u.Do(func() error {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		switch owner := ownerOf(fi); {
		case fi.Mode()&os.ModeSymlink != 0:
			return fmt.Errorf("refusing %s: it is a symlink (remove it, or set TMPDIR to a directory of yours)", path)
		case !fi.IsDir():
			return fmt.Errorf("refusing %s: not a directory (remove it, or set TMPDIR to a directory of yours)", path)
		case owner != u.UID:
			return fmt.Errorf("refusing %s: it belongs to uid %d, not to %s (remove it, or set TMPDIR to a directory of yours)", path, owner, u)
		case fi.Mode().Perm()&0o077 != 0:
			return os.Chmod(path, 0o700)
		}
		return nil
	})
}

// Owner is the uid that owns path (not following a symlink), -1 when
// unknown.
func Owner(path string) int {
	fi, err := os.Lstat(path)
	if err != nil {
		return -1
	}
	return ownerOf(fi)
}

// Name is the login name of uid, else the uid in decimal.
func Name(uid int) string {
	if u, err := lookup(uid); err == nil && u.Name != "" {
		return u.Name
	}
	return strconv.Itoa(uid)
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
