//go:build !linux

package tunnel

import (
	"errors"
	"fmt"

	"golang.zx2c4.com/wireguard/tun"
)

// TUN is a kernel TUN device; only Linux is supported.
type TUN struct{}

// CreateTUN returns errors.ErrUnsupported outside Linux.
func CreateTUN(cfg TUNConfig) (*TUN, error) {
	return nil, fmt.Errorf("create TUN %q: %w", cfg.Name, TUNSupported())
}

// TUNSupported is an error wrapping errors.ErrUnsupported outside Linux
// (macOS utun and Windows wintun are not done yet).
func TUNSupported() error { return errTUNUnsupported }

var errTUNUnsupported error = unsupportedError("TUN mode is Linux-only for now: use --netstack")

// unsupportedError is a one-line hint that is errors.ErrUnsupported.
type unsupportedError string

func (e unsupportedError) Error() string { return string(e) }
func (e unsupportedError) Unwrap() error { return errors.ErrUnsupported }

func (t *TUN) Device() tun.Device { return nil }
func (t *TUN) Name() string       { return "" }
func (t *TUN) Close() error       { return nil }
