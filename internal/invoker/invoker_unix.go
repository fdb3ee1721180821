//go:build unix

package invoker

import (
	"os"
	"syscall"
)

// Credential is what exec.Cmd.SysProcAttr.Credential takes.
type Credential = syscall.Credential

// oNoFollow makes OpenFile fail on a symlink (ELOOP) instead of following it.
const oNoFollow = syscall.O_NOFOLLOW

// ownerOf is the uid owning fi's file, -1 when unknown.
func ownerOf(fi os.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}
