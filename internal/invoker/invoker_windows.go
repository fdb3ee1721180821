package invoker

import "os"

// Credential mirrors syscall.Credential, which Windows lacks; nothing
// runs a process with it here (a process never acts for another user on
// Windows: Geteuid is -1, so Current is always Self).
type Credential struct {
	Uid, Gid uint32
	Groups   []uint32
}

// oNoFollow: Windows has no O_NOFOLLOW.
const oNoFollow = 0

// ownerOf: files have no uid on Windows.
func ownerOf(os.FileInfo) int { return -1 }
