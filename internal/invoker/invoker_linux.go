package invoker

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs f with the user's file-system identity when acting for them:
// on a locked OS thread whose fsuid, fsgid and groups are the user's, so
// files f creates are theirs and every permission check is theirs (the
// kernel drops root's file capabilities while the fsuid is not 0). f must
// make its file-system calls itself, in this goroutine: goroutines it
// starts run with root's rights. When not acting, Do just calls f.
//
// New OS threads are never cloned from a locked thread (the Go runtime
// starts them from a clean template thread), so the switch cannot leak to
// other goroutines; a thread whose switch back fails is left locked, and
// the runtime ends it with the goroutine.
func (u *User) Do(f func() error) (err error) {
	if !u.acting {
		return f()
	}
	runtime.LockOSThread()
	groups, err := unix.Getgroups()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("act as %s: getgroups: %w", u, err)
	}
	restored := false
	defer func() {
		if restored {
			runtime.UnlockOSThread()
		}
	}()
	// The thread-local setgroups(2) (x/sys uses the raw syscall; the
	// syscall package's Setgroups changes every thread).
	if err := unix.Setgroups(u.Groups); err != nil {
		restored = true
		return fmt.Errorf("act as %s: setgroups: %w", u, err)
	}
	unix.Setfsgid(u.GID)
	unix.Setfsuid(u.UID)
	defer func() {
		unix.Setfsuid(0)
		unix.Setfsgid(0)
		serr := unix.Setgroups(groups)
		// setfsuid(-1) changes nothing and returns the current fsuid.
		uid, _ := unix.SetfsuidRetUid(-1)
		gid, _ := unix.SetfsgidRetGid(-1)
		restored = serr == nil && uid == 0 && gid == 0
	}()
	if uid, _ := unix.SetfsuidRetUid(-1); uid != u.UID {
		return fmt.Errorf("act as %s: setfsuid did not take (fsuid %d)", u, uid)
	}
	if gid, _ := unix.SetfsgidRetGid(-1); gid != u.GID {
		return fmt.Errorf("act as %s: setfsgid did not take (fsgid %d)", u, gid)
	}
	return f()
}
