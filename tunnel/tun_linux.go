package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// TUN is a kernel TUN device with its address and routes.
type TUN struct {
	dev  tun.Device
	name string
	log  *slog.Logger

	mu     sync.Mutex
	link   netlink.Link
	routes []netlink.Route // added by us, removed in reverse order
	addr   *netlink.Addr
	closed bool
}

// TUNSupported is nil: TUN mode works on Linux.
func TUNSupported() error { return nil }

// CreateTUN creates the TUN device (wireguard-go enables the kernel
// offloads), assigns the address and MTU, brings it up and adds the
// routes. On failure everything added so far is undone.
func CreateTUN(cfg TUNConfig) (*TUN, error) {
	cfg.setDefaults()
	if !cfg.Addr.IsValid() {
		return nil, fmt.Errorf("create TUN %q: address must be set", cfg.Name)
	}
	dev, err := tun.CreateTUN(cfg.Name, cfg.MTU)
	if err != nil {
		return nil, tunError(cfg.Name, err)
	}
	name, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("create TUN %q: read name: %w", cfg.Name, err)
	}
	t := &TUN{dev: dev, name: name, log: obs.Component(discardLogger(cfg.Log), "tun").With("dev", name)}
	if err := t.configure(cfg); err != nil {
		t.Close()
		return nil, err
	}
	t.log.Info("TUN up", "addr", cfg.Addr.String(), "mtu", cfg.MTU, "routes", len(t.routes))
	return t, nil
}

// tunError turns permission failures into the one-line remedy users need.
func tunError(name string, err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("create TUN %q: permission denied: run with sudo, or use --netstack: %w", name, err)
	}
	return fmt.Errorf("create TUN %q: %w", name, err)
}

func (t *TUN) configure(cfg TUNConfig) error {
	link, err := netlink.LinkByName(t.name)
	if err != nil {
		return tunError(t.name, fmt.Errorf("find link: %w", err))
	}
	t.link = link
	if err := netlink.LinkSetMTU(link, cfg.MTU); err != nil {
		return tunError(t.name, fmt.Errorf("set MTU %d: %w", cfg.MTU, err))
	}
	addr := &netlink.Addr{IPNet: prefixToIPNet(cfg.Addr)}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return tunError(t.name, fmt.Errorf("add address %s: %w", cfg.Addr, err))
	}
	t.addr = addr
	if err := netlink.LinkSetUp(link); err != nil {
		return tunError(t.name, fmt.Errorf("set link up: %w", err))
	}
	for _, p := range cfg.Routes {
		p = p.Masked()
		if !cfg.AllowConflicts {
			if err := t.checkConflict(p); err != nil {
				return err
			}
		}
		r := netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixToIPNet(p), Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteAdd(&r); err != nil {
			return tunError(t.name, fmt.Errorf("add route %s: %w", p, err))
		}
		t.routes = append(t.routes, r)
	}
	return nil
}

// checkConflict refuses p if it overlaps a route in the main table that is
// not on our own link.
func (t *TUN) checkConflict(p netip.Prefix) error {
	family := netlink.FAMILY_V4
	if p.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	existing, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return tunError(t.name, fmt.Errorf("list routes: %w", err))
	}
	for _, r := range existing {
		if r.LinkIndex == t.link.Attrs().Index {
			continue
		}
		dst := routeDst(r, family)
		if !dst.IsValid() || !dst.Overlaps(p) {
			continue
		}
		if dst.Bits() == 0 {
			continue // the default route overlaps everything; more specific routes win
		}
		return fmt.Errorf("route %s overlaps existing route %s: pass --allow-conflicts to route it through the tunnel anyway", p, describeRoute(r, dst))
	}
	return nil
}

func routeDst(r netlink.Route, family int) netip.Prefix {
	if r.Dst == nil {
		if family == netlink.FAMILY_V6 {
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return ipNetToPrefix(r.Dst)
}

func describeRoute(r netlink.Route, dst netip.Prefix) string {
	s := dst.String()
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
		s += " dev " + l.Attrs().Name
	}
	return s
}

// Device returns the wireguard-go device for NewDevice.
func (t *TUN) Device() tun.Device { return t.dev }

// Name returns the kernel's name for the device.
func (t *TUN) Name() string { return t.name }

// Close removes the routes and address, deletes the link and closes the
// device. Deleting the link would drop the routes anyway; removing them
// first keeps the order explicit and leaves nothing behind if the link
// delete fails. Errors for things already gone are ignored, so Close is
// idempotent and safe after the wireguard device closed the TUN.
func (t *TUN) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	for i := len(t.routes) - 1; i >= 0; i-- {
		if err := netlink.RouteDel(&t.routes[i]); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", t.routes[i].Dst, err))
		}
	}
	t.routes = nil
	if t.link != nil && t.addr != nil {
		if err := netlink.AddrDel(t.link, t.addr); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete address %s: %w", t.addr.IPNet, err))
		}
	}
	// Closing the file descriptor removes a non-persistent TUN (the kernel
	// refuses RTM_DELLINK for it with EOPNOTSUPP); delete the link only if it
	// somehow outlived that.
	if err := t.dev.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		errs = append(errs, fmt.Errorf("close device: %w", err))
	}
	if t.link != nil {
		if l, err := netlink.LinkByName(t.name); err == nil {
			if err := netlink.LinkDel(l); err != nil && !gone(err) && !errors.Is(err, unix.EOPNOTSUPP) {
				errs = append(errs, fmt.Errorf("delete link: %w", err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close TUN %q: %w", t.name, err)
	}
	t.log.Info("TUN removed")
	return nil
}

// gone reports errors meaning the object was already removed.
func gone(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EADDRNOTAVAIL) ||
		errors.Is(err, unix.ENOENT) || errors.As(err, &lnf)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) netip.Prefix {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}
