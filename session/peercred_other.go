//go:build !linux

package session

import (
	"errors"
	"net"
)

// peerUID is not implemented here: the socket's mode (0600, the owner's)
// is the only guard.
func peerUID(net.Conn) (int, error) { return -1, errors.ErrUnsupported }
