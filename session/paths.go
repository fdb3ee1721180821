// Package session runs `bridgetun up`: one workstation session that joins
// the cluster network, serves a local status/down API over a Unix socket,
// and undoes everything it changed on exit — or at the next start after a
// crash.
package session

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/tunnel"
)

// Paths are where a session keeps its files.
type Paths struct {
	StateDir string // key, leftovers record; survives reboots
	Socket   string // control socket, owner-only
	LogDir   string // background session logs
	Volumes  string // default root of intercepts' volume mirrors (NS/SERVICE below it)
	// SystemDir holds root's own state (the resolv.conf backup): never a
	// directory the invoking user can write, or they could make root
	// restore any file over /etc/resolv.conf. /var/lib/bridgetun for a
	// root session; "" = StateDir.
	SystemDir string
	// Marker is where a root-held session records, readable by everyone,
	// whose it is (so another user's commands can say so); "" = none.
	Marker string
	// Owner is the user these files belong to (the sudo user when root
	// acts for them); nil = this process's user.
	Owner *invoker.User
}

// defaultMarker is the owner record of a root-held session on this
// machine (a variable for tests).
var defaultMarker = "/run/bridgetun/session.json"

// DefaultPaths are UserPaths for the user this process acts for (the sudo
// or pkexec user when root acts for one); a malformed SUDO_UID, which `up`
// reports, falls back to the process's own user.
func DefaultPaths() Paths {
	u, err := invoker.Current()
	if err != nil {
		u = invoker.Self()
	}
	return UserPaths(u)
}

// UserPaths picks u's locations: state under their config dir, logs and
// volume mirrors under their state dir ($XDG_STATE_HOME/bridgetun, else
// ~/.local/state/bridgetun), the socket under their runtime dir
// ($XDG_RUNTIME_DIR or /run/user/UID, then bridgetun/). Without a home or
// a runtime dir those go to $TMPDIR/bridgetun-UID, which must be the
// user's own (see invoker.PrivateDir). Root acting for u and u's own
// commands agree on every path whether or not sudo kept the variables;
// where they might not (TMPDIR, which sudo resets), the socket is looked
// for in each candidate place, then where a root-held session's marker
// says it is. BRIDGETUN_STATE_DIR moves all of it under one directory
// (several sessions on one machine, tests).
func UserPaths(u *invoker.User) Paths {
	if dir := os.Getenv("BRIDGETUN_STATE_DIR"); dir != "" {
		return Paths{StateDir: dir, Socket: filepath.Join(dir, "bridgetun.sock"), LogDir: filepath.Join(dir, "logs"),
			Volumes: filepath.Join(dir, "volumes"), SystemDir: dir, Marker: filepath.Join(dir, "owner.json"), Owner: u}
	}
	temp := filepath.Join(u.TempDirs()[0], fmt.Sprintf("bridgetun-%d", u.UID))
	p := Paths{StateDir: temp, LogDir: temp, Marker: defaultMarker, Owner: u}
	if d := u.ConfigDir(); d != "" {
		p.StateDir = filepath.Join(d, "bridgetun")
	}
	if d := u.StateDir(); d != "" {
		p.LogDir = filepath.Join(d, "bridgetun")
	}
	p.Volumes = filepath.Join(p.LogDir, "volumes")
	if os.Geteuid() == 0 {
		p.SystemDir = systemStateDir
	}
	candidates := socketCandidates(u)
	p.Socket = candidates[0]
	for _, c := range candidates {
		if isSocket(c) {
			p.Socket = c
			return p
		}
	}
	if m, ok := readMarker(p.Marker); ok && m.Socket != "" && (m.UID == u.UID || os.Geteuid() == 0) {
		p.Socket = m.Socket
	}
	return p
}

// socketCandidates are the places u's socket may be, the one a new
// session binds first.
func socketCandidates(u *invoker.User) []string {
	var out []string
	add := func(dir string) {
		s := filepath.Join(dir, "bridgetun.sock")
		for _, o := range out {
			if o == s {
				return
			}
		}
		out = append(out, s)
	}
	if d := u.RuntimeDir(); d != "" {
		add(filepath.Join(d, "bridgetun"))
	}
	for _, t := range u.TempDirs() {
		add(filepath.Join(t, fmt.Sprintf("bridgetun-%d", u.UID)))
	}
	return out
}

// systemStateDir holds a root session's own state (the resolv.conf
// backup), whoever it acts for: a system file's backup belongs with the
// system's state, not in a home (under `sudo -E` $HOME is the user's).
const systemStateDir = "/var/lib/bridgetun"

func isSocket(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// owner is whose these paths are.
func (p Paths) owner() *invoker.User {
	if p.Owner != nil {
		return p.Owner
	}
	return invoker.Self()
}

// systemDir is where root's own state goes.
func (p Paths) systemDir() string {
	if p.SystemDir != "" {
		return p.SystemDir
	}
	return p.StateDir
}

// loadOrCreateKey reads the workstation's WireGuard key, creating it when
// missing, as the paths' owner: under sudo the key is the user's file in
// their config dir.
func (p Paths) loadOrCreateKey() (tunnel.Key, error) {
	var key tunnel.Key
	err := p.owner().Do(func() error {
		var err error
		key, err = tunnel.LoadOrCreateKey(p.keyFile())
		return err
	})
	return key, err
}

func (p Paths) keyFile() string       { return filepath.Join(p.StateDir, "wireguard.key") }
func (p Paths) leftoversFile() string { return filepath.Join(p.StateDir, "session.json") }
