//go:build !linux

package dnsproxy

import (
	"errors"
	"fmt"
)

// systemResolvedBus: systemd-resolved exists only on Linux.
func systemResolvedBus() (ResolvedBus, error) {
	return nil, fmt.Errorf("systemd-resolved over D-Bus: %w", errors.ErrUnsupported)
}

// ResolvedOnBus is always false off Linux.
func ResolvedOnBus() bool { return false }
