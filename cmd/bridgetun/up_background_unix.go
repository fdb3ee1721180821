//go:build unix

package main

import (
	"os"
	"syscall"
)

// detachedProcAttr starts the background session in a session of its
// own, so the terminal's hangup and Ctrl-C do not reach it.
func detachedProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }

// stopChild asks the background session to end (it cleans up on SIGTERM).
func stopChild(p *os.Process) { _ = p.Signal(syscall.SIGTERM) }
