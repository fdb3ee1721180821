package session

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"

	"github.com/bridgetun/bridgetun/internal/netlimit"
)

// peerUID is the uid of the process at the other end of a Unix socket
// connection, from SO_PEERCRED (what it was when it connected).
func peerUID(c net.Conn) (int, error) {
	uc, ok := netlimit.Unwrap(c).(*net.UnixConn)
	if !ok {
		return -1, fmt.Errorf("peer credentials: %T is not a Unix socket", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, fmt.Errorf("peer credentials: %w", err)
	}
	if cerr != nil {
		return -1, fmt.Errorf("peer credentials: %w", cerr)
	}
	return int(cred.Uid), nil
}
