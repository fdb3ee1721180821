package session

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
)

// deleteLink removes a leftover network device; os.ErrNotExist if it is gone.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return os.ErrNotExist
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	// The name comes from the leftovers record, the user's file under
	// sudo: only a TUN device is ours to remove.
	if l.Type() != "tuntap" {
		return fmt.Errorf("%s is a %s device, not a TUN: not removing it", name, l.Type())
	}
	return netlink.LinkDel(l)
}
