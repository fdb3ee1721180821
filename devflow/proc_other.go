//go:build !unix

package devflow

import (
	"os"
	"syscall"

	"github.com/bridgetun/bridgetun/internal/invoker"
)

// serverProcAttr: no process groups here (Windows); the server is
// signalled alone, and Windows cannot send it os.Interrupt, so stop kills
// it after stopGrace.
func serverProcAttr(cred *invoker.Credential) *syscall.SysProcAttr { return nil }

func commandProcAttr(cred *invoker.Credential) *syscall.SysProcAttr { return nil }

func signalGroup(p *os.Process, sig syscall.Signal) {
	if sig == syscall.SIGKILL {
		_ = p.Kill()
		return
	}
	_ = p.Signal(os.Interrupt)
}

// openNoFollow opens name for writing, created with mode perm. Windows
// has no O_NOFOLLOW: writePrivateFile's Lstat refusal is the guard.
func openNoFollow(name string, perm os.FileMode) (*os.File, error) {
	return invoker.Self().OpenFile(name, os.O_WRONLY|os.O_CREATE, perm)
}
