// Package nstest builds throwaway network topologies out of Linux network
// namespaces and veth pairs, for the data-plane tests and benchmarks. Every
// namespace it creates carries a unique prefix and is deleted on Close, so a
// test never touches the host's own interfaces or any address outside them.
package nstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netns"
)

// NS is one network namespace made by a Lab.
type NS struct {
	Name   string
	handle netns.NsHandle
}

// Lab owns a set of namespaces and removes them all on Close.
type Lab struct {
	prefix string
	mu     sync.Mutex
	nss    []*NS
}

// Root reports whether the process can create namespaces (tests skip or fail on it).
func Root() bool { return os.Geteuid() == 0 }

// NewLab returns a Lab whose namespace names start with a prefix unique to this process.
func NewLab(tag string) *Lab {
	return &Lab{prefix: fmt.Sprintf("bt%s%d", tag, os.Getpid()%100000)}
}

// NewNS creates a namespace "<prefix>-<name>" with loopback up.
func (l *Lab) NewNS(name string) (*NS, error) {
	full := l.prefix + "-" + name
	_ = exec.Command("ip", "netns", "del", full).Run() // a leftover from a crashed run
	if err := Run("ip", "netns", "add", full); err != nil {
		return nil, err
	}
	h, err := netns.GetFromName(full)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", full).Run()
		return nil, fmt.Errorf("open netns %q: %w", full, err)
	}
	ns := &NS{Name: full, handle: h}
	l.mu.Lock()
	l.nss = append(l.nss, ns)
	l.mu.Unlock()
	if err := ns.Run("ip", "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return ns, nil
}

// Open returns a handle on an existing namespace made by someone else (the
// e2e workstation, say); closing it is the caller's business, deleting it is not.
func Open(name string) (*NS, error) {
	h, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open netns %q: %w", name, err)
	}
	return &NS{Name: name, handle: h}, nil
}

// Link joins a and b with a veth pair and gives each end an address
// (CIDR notation, e.g. "10.200.1.1/24"). Interface names are "<peer>" short forms.
func (l *Lab) Link(a *NS, aName, aAddr string, b *NS, bName, bAddr string) error {
	tmpA, tmpB := shortName(a.Name+aName), shortName(b.Name+bName)
	if err := Run("ip", "link", "add", tmpA, "type", "veth", "peer", "name", tmpB); err != nil {
		return err
	}
	for _, end := range []struct {
		ns        *NS
		tmp, name string
		addr      string
	}{{a, tmpA, aName, aAddr}, {b, tmpB, bName, bAddr}} {
		if err := Run("ip", "link", "set", end.tmp, "netns", end.ns.Name); err != nil {
			return err
		}
		if err := end.ns.Run("ip", "link", "set", end.tmp, "name", end.name); err != nil {
			return err
		}
		if err := end.ns.Run("ip", "addr", "add", end.addr, "dev", end.name); err != nil {
			return err
		}
		if err := end.ns.Run("ip", "link", "set", end.name, "up"); err != nil {
			return err
		}
	}
	return nil
}

// Close deletes every namespace the lab made (their veths go with them).
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for _, ns := range l.nss {
		ns.handle.Close()
		if err := Run("ip", "netns", "del", ns.Name); err != nil {
			errs = append(errs, err)
		}
	}
	l.nss = nil
	return errors.Join(errs...)
}

// Run runs a command inside the namespace ("ip netns exec").
func (n *NS) Run(args ...string) error {
	return Run(append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// Output runs a command inside the namespace and returns its combined output.
func (n *NS) Output(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s (in %s): %w: %s", strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Command returns a command that runs inside the namespace.
func (n *NS) Command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Do runs f on an OS thread switched into the namespace. Sockets and devices
// that f creates stay in the namespace after f returns; goroutines that f starts
// do not inherit it. The thread is discarded afterwards rather than switched back,
// so no goroutine ever runs in a namespace by accident.
func (n *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := netns.Set(n.handle); err != nil {
			errc <- fmt.Errorf("enter netns %q: %w", n.Name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// DialContext dials from inside the namespace.
func (n *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Listen opens a listener inside the namespace.
func (n *NS) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// ListenPacket opens a packet listener inside the namespace.
func (n *NS) ListenPacket(network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(func() error {
		var err error
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// Run runs a host command and returns its output in the error.
func Run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// IsUnreachable reports whether err is what a connect to an unroutable or
// filtered address gives (no route, unreachable, refused by policy, timeout).
func IsUnreachable(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, context.DeadlineExceeded)
}

// shortName squeezes a name into the 15 bytes Linux allows for interfaces,
// keeping it unique per input.
func shortName(s string) string {
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return fmt.Sprintf("btv%08x", h)
}
