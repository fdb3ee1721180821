package session

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/bridgetun/bridgetun/internal/invoker"
)

// ForeignSessionError says the session on this machine is another user's:
// a root-held (TUN) session is one per machine, and its socket answers
// only its owner and root.
type ForeignSessionError struct {
	UID  int
	User string
}

func (e *ForeignSessionError) Error() string {
	return fmt.Sprintf("refused: the session on this machine belongs to %s (uid %d); only %s and root can use it", e.User, e.UID, e.User)
}

// ownerRecord is a root-held session's marker: whose it is and where its
// socket is. Root writes it readable by everyone in a directory only root
// can write, so it can be trusted.
type ownerRecord struct {
	UID    int    `json:"uid"`
	User   string `json:"user"`
	PID    int    `json:"pid"`
	Socket string `json:"socket"`
}

// markerPath is where this process looks for a root-held session's
// marker (the same choice as UserPaths).
func markerPath() string {
	if dir := os.Getenv("BRIDGETUN_STATE_DIR"); dir != "" {
		return filepath.Join(dir, "owner.json")
	}
	return defaultMarker
}

// readMarker returns the marker of a live root-held session; a missing,
// unreadable, stale or untrusted one (not written by root or by us) is no
// marker.
func readMarker(path string) (ownerRecord, bool) {
	var m ownerRecord
	if path == "" {
		return m, false
	}
	if owner := invoker.Owner(path); owner != 0 && owner != os.Geteuid() {
		return m, false
	}
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &m) != nil || m.PID <= 0 || !processAlive(m.PID) {
		return ownerRecord{}, false
	}
	return m, true
}

// writeMarker records a root-held session's owner and socket; sessions not
// run by root (netstack mode) are per user and record nothing. A marker
// directory that is not root's own is left alone.
func writeMarker(p Paths) error {
	if p.Marker == "" || os.Geteuid() != 0 {
		return nil
	}
	dir := filepath.Dir(p.Marker)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("session marker dir %s: %w", dir, err)
	}
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() || invoker.Owner(dir) != 0 {
		return nil
	}
	u := p.owner()
	b, _ := json.Marshal(ownerRecord{UID: u.UID, User: u.Name, PID: os.Getpid(), Socket: p.Socket})
	if err := invoker.Self().WriteFile(p.Marker, b, 0o644); err != nil {
		return fmt.Errorf("session marker: %w", err)
	}
	return nil
}

// removeMarker removes the marker if it is still this process's.
func removeMarker(path string) {
	if path == "" || os.Geteuid() != 0 {
		return
	}
	var m ownerRecord
	if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &m) == nil && m.PID == os.Getpid() {
		_ = os.Remove(path)
	}
}

// notRunning turns a failed dial into ErrNotRunning — or, when a live
// root-held session of another user runs on this machine, into the
// refusal naming its owner.
func (c *Client) notRunning(err error) error {
	err = notRunning(err)
	if !errors.Is(err, ErrNotRunning) {
		return err
	}
	if m, ok := readMarker(c.marker); ok && m.UID != c.uid && c.uid != 0 {
		return &ForeignSessionError{UID: m.UID, User: m.User}
	}
	return err
}

// refused reads the answer of a session that refused this caller (its
// peer-credential check) as the one-line error it sent; nil for any other
// answer.
func refused(resp *http.Response) error {
	if resp.StatusCode != http.StatusForbidden {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
	return errors.New(strings.TrimSpace(string(b)))
}
