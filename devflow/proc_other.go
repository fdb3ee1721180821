//go:build !linux

package devflow

import (
	"errors"
	"os"
	"syscall"

	"github.com/bridgetun/bridgetun/internal/invoker"
)

// serverProcAttr: no process groups here; the server is signalled alone.
func serverProcAttr(cred *invoker.Credential) *syscall.SysProcAttr { return nil }

func commandProcAttr(cred *invoker.Credential) *syscall.SysProcAttr { return nil }

func signalGroup(p *os.Process, sig syscall.Signal) {
	if sig == syscall.SIGKILL {
		_ = p.Kill()
		return
	}
	_ = p.Signal(os.Interrupt)
}

func openNoFollow(name string, perm os.FileMode) (*os.File, error) {
	return nil, errors.ErrUnsupported
}
