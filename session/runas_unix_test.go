//go:build unix

package session

import (
	"os/exec"
	"syscall"
)

// runAs makes cmd run as uid (gid = uid).
func runAs(cmd *exec.Cmd, uid int) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
}
