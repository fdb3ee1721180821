// Package session runs `bridgetun up`: one workstation session that joins
// the cluster network, serves a local status/down API over a Unix socket,
// and undoes everything it changed on exit — or at the next start after a
// crash.
package session

import (
	"fmt"
	"os"
	"path/filepath"
)

// Paths are where a session keeps its files.
type Paths struct {
	StateDir string // key, leftovers record; survives reboots
	Socket   string // control socket, owner-only
	LogDir   string // background session logs
	Volumes  string // default root of intercepts' volume mirrors (NS/SERVICE below it)
}

// DefaultPaths picks per-user locations: the socket under $XDG_RUNTIME_DIR
// (else the temp dir), state under the user's config dir, logs under
// $TMPDIR/bridgetun. BRIDGETUN_STATE_DIR moves all three under one
// directory (several sessions on one machine, tests).
func DefaultPaths() Paths {
	if dir := os.Getenv("BRIDGETUN_STATE_DIR"); dir != "" {
		return Paths{StateDir: dir, Socket: filepath.Join(dir, "bridgetun.sock"), LogDir: filepath.Join(dir, "logs"), Volumes: filepath.Join(dir, "volumes")}
	}
	state := filepath.Join(os.TempDir(), fmt.Sprintf("bridgetun-%d", os.Getuid()))
	if d, err := os.UserConfigDir(); err == nil {
		state = filepath.Join(d, "bridgetun")
	}
	run := filepath.Join(os.TempDir(), fmt.Sprintf("bridgetun-%d", os.Getuid()))
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		run = filepath.Join(d, "bridgetun")
	}
	return Paths{StateDir: state, Socket: filepath.Join(run, "bridgetun.sock"), LogDir: filepath.Join(os.TempDir(), "bridgetun"), Volumes: filepath.Join(os.TempDir(), "bridgetun", "volumes")}
}

func (p Paths) keyFile() string       { return filepath.Join(p.StateDir, "wireguard.key") }
func (p Paths) leftoversFile() string { return filepath.Join(p.StateDir, "session.json") }
