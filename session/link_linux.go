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
	return netlink.LinkDel(l)
}
