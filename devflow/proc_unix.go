//go:build unix

package devflow

import (
	"os"
	"syscall"

	"github.com/bridgetun/bridgetun/internal/invoker"
)

// serverProcAttr puts a server in a process group of its own, running as
// cred (nil = this process's identity).
func serverProcAttr(cred *invoker.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}

// commandProcAttr runs a command in this process's group (it shares the
// terminal: Ctrl-C reaches it directly) as cred (nil = this process's
// identity).
func commandProcAttr(cred *invoker.Credential) *syscall.SysProcAttr {
	if cred == nil {
		return nil
	}
	return &syscall.SysProcAttr{Credential: cred}
}

// signalGroup sends sig to the process group led by p.
func signalGroup(p *os.Process, sig syscall.Signal) {
	_ = syscall.Kill(-p.Pid, sig)
}

// openNoFollow opens name for writing, created with mode perm, never
// through a symlink at name (ELOOP).
func openNoFollow(name string, perm os.FileMode) (*os.File, error) {
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, perm)
}
