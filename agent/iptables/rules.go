// Package iptables renders and applies the intercept sidecar's nat rules.
// bridgetun owns its BRIDGETUN-* chains: the ruleset is rendered as text,
// applied at once with iptables-restore --noflush, and removed (hooks, then
// chains) by an idempotent Cleanup that also runs before every Apply.
package iptables

import (
	"errors"
	"fmt"
	"strings"
)

// Chain names; the hooks jump into them from the built-in chains.
const (
	InboundChain = "BRIDGETUN-INBOUND" // from PREROUTING: traffic arriving at the pod
	OutputChain  = "BRIDGETUN-OUTPUT"  // from OUTPUT: traffic from other containers of the pod
)

// Rules says which container port the sidecar takes over.
type Rules struct {
	ContainerPort int // the intercepted container port, e.g. 8080
	SidecarPort   int // where the sidecar listens, e.g. 15001
	SidecarUID    int // the sidecar's UID: its own connections (pass-through) are never redirected
}

// Validate names the field that is wrong.
func (r Rules) Validate() error {
	switch {
	case r.ContainerPort < 1 || r.ContainerPort > 65535:
		return fmt.Errorf("container port %d: want 1-65535", r.ContainerPort)
	case r.SidecarPort < 1 || r.SidecarPort > 65535:
		return fmt.Errorf("sidecar port %d: want 1-65535", r.SidecarPort)
	case r.SidecarPort == r.ContainerPort:
		return errors.New("sidecar port equals the container port: pick another sidecar port")
	case r.SidecarUID < 1:
		return fmt.Errorf("sidecar uid %d: the sidecar must run as a non-root user so its connections can be exempted", r.SidecarUID)
	}
	return nil
}

// hooks are the jumps from built-in chains, one per line as iptables
// arguments after -t nat -A/-D.
var hooks = [][]string{
	{"PREROUTING", "-p", "tcp", "-j", InboundChain},
	{"OUTPUT", "-p", "tcp", "-j", OutputChain},
}

// Render returns the ruleset for iptables-restore --noflush, written the way
// iptables-save prints it (so the two compare). Declaring the
// chains flushes them, so applying twice leaves one copy of each rule.
func (r Rules) Render() string {
	var b strings.Builder
	b.WriteString("*nat\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n", InboundChain)
	fmt.Fprintf(&b, ":%s - [0:0]\n", OutputChain)
	fmt.Fprintf(&b, "-A %s -p tcp -m tcp --dport %d -j REDIRECT --to-ports %d\n", InboundChain, r.ContainerPort, r.SidecarPort)
	fmt.Fprintf(&b, "-A %s -m owner --uid-owner %d -j RETURN\n", OutputChain, r.SidecarUID)
	fmt.Fprintf(&b, "-A %s -o lo -p tcp -m tcp --dport %d -j REDIRECT --to-ports %d\n", OutputChain, r.ContainerPort, r.SidecarPort)
	for _, h := range hooks {
		fmt.Fprintf(&b, "-A %s\n", strings.Join(h, " "))
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// Runner runs an iptables tool; injected so rule handling is testable
// without root (kubernetes pkg/util/iptables does the same).
type Runner interface {
	// Run runs name with args, stdin as its input, and returns its combined output.
	Run(name string, args []string, stdin string) (string, error)
}

// Apply removes any earlier ruleset, then installs r in one iptables-restore.
func Apply(run Runner, r Rules) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("intercept rules: %w", err)
	}
	if err := Cleanup(run); err != nil {
		return err
	}
	if out, err := run.Run("iptables-restore", []string{"--noflush"}, r.Render()); err != nil {
		return fmt.Errorf("iptables-restore: %w: %s", err, strings.TrimSpace(out))
	}
	return nil
}

// Cleanup removes the hooks, then the chains. Missing pieces are fine, so
// it can run at every start and twice in a row.
func Cleanup(run Runner) error {
	for _, h := range hooks {
		for range 16 { // a hook added more than once (an old bug, a manual edit) goes too
			if _, err := run.Run("iptables", append([]string{"-w", "-t", "nat", "-D"}, h...), ""); err != nil {
				break // no (more) such rule
			}
		}
	}
	var errs []error
	for _, c := range []string{InboundChain, OutputChain} {
		if _, err := run.Run("iptables", []string{"-w", "-t", "nat", "-L", c, "-n"}, ""); err != nil {
			continue // chain absent
		}
		if out, err := run.Run("iptables", []string{"-w", "-t", "nat", "-F", c}, ""); err != nil {
			errs = append(errs, fmt.Errorf("flush %s: %w: %s", c, err, strings.TrimSpace(out)))
			continue
		}
		if out, err := run.Run("iptables", []string{"-w", "-t", "nat", "-X", c}, ""); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w: %s", c, err, strings.TrimSpace(out)))
		}
	}
	return errors.Join(errs...)
}
