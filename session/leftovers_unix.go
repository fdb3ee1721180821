//go:build unix

package session

import (
	"errors"
	"syscall"
)

// processAlive reports whether pid runs. A zombie (killed, not yet reaped
// by its parent — often init, which may take its time) does not: it holds
// no socket and no device, so its leftovers are ours to repair.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	return !zombie(pid)
}
