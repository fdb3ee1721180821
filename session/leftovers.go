package session

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// leftovers records what a running session changed on the machine, so the
// next start can undo it if this one dies without cleaning up.
type leftovers struct {
	PID     int    `json:"pid"`
	TUN     string `json:"tun,omitempty"`
	Socket  string `json:"socket"`
	Context string `json:"context"`
}

// writeLeftovers records l in the state dir, written as the paths' owner
// (under sudo the invoking user's file in their config dir).
func (p Paths) writeLeftovers(l leftovers) error {
	u := p.owner()
	if err := u.MkdirAll(p.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir %s: %w", p.StateDir, err)
	}
	b, _ := json.Marshal(l)
	if err := u.WriteFile(p.leftoversFile(), b, 0o600); err != nil {
		return fmt.Errorf("record session state: %w", err)
	}
	return nil
}

func (p Paths) clearLeftovers() {
	_ = p.owner().Do(func() error { return os.Remove(p.leftoversFile()) })
}

// repairLeftovers undoes what a dead session left behind and says what it
// did; a live session is reported as errAlreadyUp.
func (p Paths) repairLeftovers(deleteLink func(name string) error) (repaired []string, err error) {
	var b []byte
	err = p.owner().Do(func() error {
		var rerr error
		b, rerr = os.ReadFile(p.leftoversFile())
		return rerr
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p.leftoversFile(), err)
	}
	var l leftovers
	if err := json.Unmarshal(b, &l); err != nil {
		p.clearLeftovers()
		return []string{"discarded an unreadable session record"}, nil
	}
	if l.PID > 0 && processAlive(l.PID) {
		return nil, &AlreadyUpError{PID: l.PID, Socket: l.Socket}
	}
	if l.TUN != "" && geteuid() != 0 {
		return nil, fmt.Errorf("a crashed session left TUN device %s, its routes and DNS settings, which only root can remove: run `sudo bridgetun down`", l.TUN)
	}
	if l.TUN != "" {
		switch err := deleteLink(l.TUN); {
		case err == nil:
			repaired = append(repaired, "removed TUN device "+l.TUN+" and its routes")
		case errors.Is(err, os.ErrNotExist):
		default:
			return repaired, fmt.Errorf("remove leftover TUN %s: %w (remove it with `ip link del %s`)", l.TUN, err, l.TUN)
		}
	}
	// The record is the user's file: the socket is removed with their
	// rights, and only if it is this session's socket path or a socket, so
	// a record they edited cannot make root remove anything else.
	if l.Socket != "" && (l.Socket == p.Socket || isSocket(l.Socket)) {
		if err := p.owner().Do(func() error { return os.Remove(l.Socket) }); err == nil {
			repaired = append(repaired, "removed stale socket "+filepath.Base(l.Socket))
		}
	}
	p.clearLeftovers()
	return repaired, nil
}

// geteuid is os.Geteuid, pulled out for testing.
var geteuid = os.Geteuid

// AlreadyUpError says another session is running.
type AlreadyUpError struct {
	PID    int
	Socket string
}

func (e *AlreadyUpError) Error() string {
	return fmt.Sprintf("already up (pid %d): see `bridgetun status`, or `bridgetun down` first", e.PID)
}

// zombie reads the process state from /proc (Linux); elsewhere it says no.
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": comm may hold spaces and parentheses; the state
	// follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] == 'Z' || b[i+2] == 'X'
}
