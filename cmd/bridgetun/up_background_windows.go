package main

import (
	"os"
	"syscall"

	"golang.org/x/sys/windows"
)

// detachedProcAttr starts the background session without the console and
// in a process group of its own, so the console's Ctrl-C does not reach it.
func detachedProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{CreationFlags: windows.CREATE_NEW_PROCESS_GROUP | windows.DETACHED_PROCESS}
}

// stopChild ends the background session (Windows has no SIGTERM to send).
func stopChild(p *os.Process) { _ = p.Kill() }
