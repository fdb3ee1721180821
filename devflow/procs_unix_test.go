//go:build unix

package devflow

import "syscall"

// mkfifo makes a FIFO at path, mode 0600.
func mkfifo(path string) error { return syscall.Mkfifo(path, 0o600) }

// processGone reports whether no process pid exists.
func processGone(pid int) bool { return syscall.Kill(pid, 0) == syscall.ESRCH }
