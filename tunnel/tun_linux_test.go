package tunnel

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inNetns runs fn on an OS thread moved into a new, empty network namespace:
//
//	test netns:  lo ── 10.96.0.0/12       (stands for an existing LAN/VPN route)
//	             bt-test (TUN under test) ── 100.64.0.2/32 + requested routes
//
// The thread is never unlocked, so it exits with the goroutine and the
// namespace disappears with it; nothing touches the host's network.
func inNetns(t *testing.T, fn func()) {
	t.Helper()
	testkit.RequireRoot(t) // CAP_NET_ADMIN for a network namespace
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // deliberately never unlocked
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare(CLONE_NEWNET): %v", err)
			return
		}
		fn()
	}()
	<-done
}

func TestTUN(t *testing.T) {
	const name = "bt-test"
	existing := netip.MustParsePrefix("10.96.0.0/12")
	free4 := netip.MustParsePrefix("10.200.0.0/16")
	free6 := netip.MustParsePrefix("fd00:1::/64")
	conflict := netip.MustParsePrefix("10.96.0.0/16")
	tests := []struct {
		name           string
		routes         []netip.Prefix
		allowConflicts bool
		wantErr        []string // substrings; nil = success
	}{
		{name: "no conflict", routes: []netip.Prefix{free4, free6}},
		{name: "conflict refused", routes: []netip.Prefix{free4, conflict},
			wantErr: []string{"route 10.96.0.0/16 overlaps existing route 10.96.0.0/12 dev lo", "--allow-conflicts"}},
		{name: "conflict allowed", routes: []netip.Prefix{free4, conflict}, allowConflicts: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t, func() {
				if err := addExistingRoute(existing); err != nil {
					t.Errorf("set up namespace: %v", err)
					return
				}
				tu, err := CreateTUN(TUNConfig{Name: name, MTU: 1380, Addr: netip.MustParsePrefix("100.64.0.2/32"),
					Routes: tt.routes, AllowConflicts: tt.allowConflicts, Log: testkit.Logger(t)})
				if tt.wantErr != nil {
					if err == nil {
						tu.Close()
						t.Errorf("CreateTUN: got nil error, want one containing %q", tt.wantErr)
						return
					}
					for _, want := range tt.wantErr {
						if !strings.Contains(err.Error(), want) {
							t.Errorf("CreateTUN error: got %q, want it to contain %q", err, want)
						}
					}
					checkGone(t, name, tt.routes)
					return
				}
				if err != nil {
					t.Errorf("CreateTUN: %v", err)
					return
				}
				if got := tu.Name(); got != name {
					t.Errorf("Name: got %q, want %q", got, name)
				}
				if mtu, err := tu.Device().MTU(); err != nil || mtu != 1380 {
					t.Errorf("MTU: got %d, %v; want 1380", mtu, err)
				}
				link, err := netlink.LinkByName(name)
				if err != nil {
					t.Errorf("link after create: %v", err)
					return
				}
				if link.Attrs().Flags&(1<<0) == 0 { // net.FlagUp
					t.Errorf("link flags: got %v, want up", link.Attrs().Flags)
				}
				addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
				if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "100.64.0.2/32" {
					t.Errorf("addresses: got %v (%v), want [100.64.0.2/32]", addrs, err)
				}
				got := linkRoutes(t, link.Attrs().Index)
				for _, want := range tt.routes {
					if !got[want] {
						t.Errorf("routes on %s: got %v, want %s among them", name, got, want)
					}
				}
				if err := tu.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
				if err := tu.Close(); err != nil {
					t.Errorf("second Close: got %v, want nil", err)
				}
				checkGone(t, name, tt.routes)
			})
		})
	}
}

// addExistingRoute routes p via lo, standing in for a LAN or VPN route
// (the dummy link type is not available on every CI kernel).
func addExistingRoute(p netip.Prefix) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: prefixToIPNet(p)}); err != nil {
		return fmt.Errorf("add route %s: %w", p, err)
	}
	return nil
}

// linkRoutes returns the main-table destinations routed via link index.
func linkRoutes(t *testing.T, index int) map[netip.Prefix]bool {
	t.Helper()
	got := map[netip.Prefix]bool{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlink.RouteList(nil, fam)
		if err != nil {
			t.Errorf("list routes: %v", err)
			return got
		}
		for _, r := range rs {
			if r.LinkIndex == index && r.Dst != nil {
				got[ipNetToPrefix(r.Dst)] = true
			}
		}
	}
	return got
}

// checkGone asserts the TUN link and every route to routes outside the
// pre-existing lo route are gone.
func checkGone(t *testing.T, name string, routes []netip.Prefix) {
	t.Helper()
	if _, err := netlink.LinkByName(name); err == nil {
		t.Errorf("link %s: still present after Close/failed create", name)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlink.RouteList(nil, fam)
		if err != nil {
			t.Errorf("list routes: %v", err)
			return
		}
		for _, r := range rs {
			if r.Dst == nil {
				continue
			}
			d := ipNetToPrefix(r.Dst)
			for _, p := range routes {
				if d == p {
					t.Errorf("route %s: still present (link index %d)", d, r.LinkIndex)
				}
			}
		}
	}
}

func TestTUNErrorPermission(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("open /dev/net/tun: %w", unix.EPERM), `create TUN "bt0": permission denied: run with sudo, or use --netstack`},
		{fmt.Errorf("netlink: %w", unix.EACCES), `create TUN "bt0": permission denied: run with sudo, or use --netstack`},
		{unix.EBUSY, `create TUN "bt0": device or resource busy`},
	}
	for _, tt := range tests {
		if got := tunError("bt0", tt.err).Error(); !strings.HasPrefix(got, tt.want) {
			t.Errorf("tunError(%v): got %q, want prefix %q", tt.err, got, tt.want)
		}
	}
}
