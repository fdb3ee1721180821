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
	return nil, fmt.Errorf("create TUN %q: %w: use --netstack", cfg.Name, errors.ErrUnsupported)
}

func (t *TUN) Device() tun.Device { return nil }
func (t *TUN) Name() string       { return "" }
func (t *TUN) Close() error       { return nil }
