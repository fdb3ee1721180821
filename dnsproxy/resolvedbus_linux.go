//go:build linux

package dnsproxy

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

const (
	resolvedName    = "org.freedesktop.resolve1"
	resolvedPath    = dbus.ObjectPath("/org/freedesktop/resolve1")
	resolvedManager = "org.freedesktop.resolve1.Manager"
)

// dbusResolved is ResolvedBus over a D-Bus connection.
type dbusResolved struct {
	obj dbus.BusObject
}

var _ ResolvedBus = dbusResolved{}

// NewResolvedBus speaks to org.freedesktop.resolve1 over conn (the system
// bus in production, a private bus in tests).
func NewResolvedBus(conn *dbus.Conn) ResolvedBus {
	return dbusResolved{obj: conn.Object(resolvedName, resolvedPath)}
}

// systemResolvedBus uses the shared system bus connection.
func systemResolvedBus() (ResolvedBus, error) {
	conn, err := dbus.SystemBus()
	if err != nil {
		return nil, fmt.Errorf("connect to the system bus: %w", err)
	}
	return NewResolvedBus(conn), nil
}

// ResolvedOnBus reports whether systemd-resolved owns its name on the
// system bus; it is the default for Detect.ResolvedAvailable.
func ResolvedOnBus() bool {
	conn, err := dbus.SystemBus()
	if err != nil {
		return false
	}
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, resolvedName).Store(&has); err != nil {
		return false
	}
	return has
}

type resolvedLinkAddr struct {
	Family  int32
	Address []byte
}

type resolvedLinkDomain struct {
	Domain      string
	RoutingOnly bool
}

// busTimeout bounds each call: a wedged resolved must not hang `up`.
const busTimeout = 5 * time.Second

func (b dbusResolved) call(method string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), busTimeout)
	defer cancel()
	return b.obj.CallWithContext(ctx, resolvedManager+"."+method, 0, args...).Err
}

func (b dbusResolved) SetLinkDNS(ifindex int, servers []netip.Addr) error {
	addrs := make([]resolvedLinkAddr, 0, len(servers))
	for _, s := range servers {
		fam := int32(unix.AF_INET)
		if s.Is6() && !s.Is4In6() {
			fam = unix.AF_INET6
		}
		addrs = append(addrs, resolvedLinkAddr{Family: fam, Address: s.Unmap().AsSlice()})
	}
	return b.call("SetLinkDNS", int32(ifindex), addrs)
}

func (b dbusResolved) SetLinkDomains(ifindex int, domains []ResolvedDomain) error {
	ds := make([]resolvedLinkDomain, 0, len(domains))
	for _, d := range domains {
		ds = append(ds, resolvedLinkDomain{Domain: d.Domain, RoutingOnly: d.RouteOnly})
	}
	return b.call("SetLinkDomains", int32(ifindex), ds)
}

func (b dbusResolved) SetLinkDefaultRoute(ifindex int, enable bool) error {
	return b.call("SetLinkDefaultRoute", int32(ifindex), enable)
}

func (b dbusResolved) RevertLink(ifindex int) error {
	return b.call("RevertLink", int32(ifindex))
}
