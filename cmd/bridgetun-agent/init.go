package main

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/agent/iptables"
)

func newInitCmd() *cobra.Command {
	var (
		rules   iptables.Rules
		cleanup bool
	)
	cmd := &cobra.Command{
		Use:   "init (--container-port P --sidecar-port S --sidecar-uid U | --cleanup)",
		Short: "Install the intercept's iptables redirect (init container), or remove it",
		Long: `Install the nat rules that hand an intercepted container port to the sidecar,
then exit. It runs as the pod's init container, as root with NET_ADMIN, and
changes only the pod's network namespace:

  inbound TCP to --container-port, and loopback TCP to it from other containers,
  is redirected to --sidecar-port; connections of --sidecar-uid (the sidecar's
  own pass-through to the original container) are left alone.

The rules live in bridgetun's own chains (` + iptables.InboundChain + `, ` + iptables.OutputChain + `),
applied at once with iptables-restore; earlier ones are removed first, so
running it twice is fine. --cleanup removes them.`,
		Example: `  bridgetun-agent init --container-port 8080 --sidecar-port 15001 --sidecar-uid 65532
  bridgetun-agent init --cleanup`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cleanup {
				var missing []string
				for _, name := range []string{"container-port", "sidecar-port", "sidecar-uid"} {
					if !cmd.Flags().Changed(name) {
						missing = append(missing, "--"+name)
					}
				}
				if len(missing) > 0 {
					return fmt.Errorf("init: missing %s (or pass --cleanup)", strings.Join(missing, ", "))
				}
				if err := rules.Validate(); err != nil {
					return fmt.Errorf("init: %w", err)
				}
			}
			run := iptables.Exec{}
			// One harmless read first, so a missing capability or tool is
			// reported as such (Cleanup treats unreadable chains as absent).
			if out, err := run.Run("iptables", []string{"-w", "-t", "nat", "-S", "PREROUTING"}, ""); err != nil {
				return explainIptables("iptables", fmt.Errorf("%w: %s", err, strings.TrimSpace(out)))
			}
			if cleanup {
				if err := iptables.Cleanup(run); err != nil {
					return explainIptables("iptables", err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), "removed the intercept rules")
				return nil
			}
			if err := iptables.Apply(run, rules); err != nil {
				return explainIptables("iptables-restore", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "redirecting TCP port %d to the sidecar on port %d (uid %d exempt)\n",
				rules.ContainerPort, rules.SidecarPort, rules.SidecarUID)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&rules.ContainerPort, "container-port", 0, "the intercepted container port, e.g. 8080")
	f.IntVar(&rules.SidecarPort, "sidecar-port", 0, "where the sidecar listens (its --listen port), e.g. 15001")
	f.IntVar(&rules.SidecarUID, "sidecar-uid", 0, "the sidecar container's UID (non-root); its connections are not redirected")
	f.BoolVar(&cleanup, "cleanup", false, "remove the rules instead of installing them")
	cmd.MarkFlagsMutuallyExclusive("cleanup", "container-port")
	cmd.MarkFlagsMutuallyExclusive("cleanup", "sidecar-port")
	cmd.MarkFlagsMutuallyExclusive("cleanup", "sidecar-uid")
	return cmd
}

// explainIptables turns the usual failures of an iptables tool into one
// line with a remedy; others pass unchanged.
func explainIptables(tool string, err error) error {
	msg := err.Error()
	switch {
	case errors.Is(err, exec.ErrNotFound):
		return fmt.Errorf("%s not found: the init container must use the bridgetun-agent image, which ships iptables", tool)
	case strings.Contains(msg, "Permission denied"), strings.Contains(msg, "you must be root"), strings.Contains(msg, "Operation not permitted"):
		return fmt.Errorf("%s: permission denied: the init container needs NET_ADMIN and must run as root (securityContext: runAsUser: 0, capabilities.add: [NET_ADMIN])", tool)
	case strings.Contains(msg, "Table does not exist"), strings.Contains(msg, "can't initialize"):
		return fmt.Errorf("%s: the nat table is unavailable on this node (kernel without iptables nat support): %w", tool, err)
	}
	return err
}
