//go:build !linux

package invoker

import (
	"errors"
	"fmt"
)

// Do runs f. Acting for another user's files is Linux-only for now
// (elsewhere a privileged helper service will do root's part).
func (u *User) Do(f func() error) error {
	if !u.acting {
		return f()
	}
	return fmt.Errorf("act as %s: %w", u, errors.ErrUnsupported)
}
