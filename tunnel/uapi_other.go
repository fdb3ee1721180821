//go:build !linux

package tunnel

import (
	"context"
	"errors"
)

// ServeUAPI is Linux-only here (wireguard-tools' socket in TUN mode).
func (d *Device) ServeUAPI(ctx context.Context, name string) error {
	return errors.ErrUnsupported
}
