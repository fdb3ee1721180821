// Command bridgetun puts a workstation inside a Kubernetes cluster's network.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/devflow"
	"github.com/bridgetun/bridgetun/internal/version"
)

// main is the only place that exits: a RunE returns, so that everything it
// deferred has run, and a command's exit code comes back as a
// *devflow.ExitError, passed on without a message.
func main() {
	root := newRootCmd()
	root.SetArgs(pluginArgs(os.Args[0], os.Args[1:]))
	err := root.Execute()
	var exit *devflow.ExitError
	switch {
	case errors.As(err, &exit):
		os.Exit(exit.Code)
	case err != nil:
		fmt.Fprintln(os.Stderr, root.DisplayName()+":", programText(root, err.Error()))
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "bridgetun",
		Short: "Join your workstation to a Kubernetes cluster's network",
		Long: `bridgetun gives this machine the cluster's pod and service IPs over a userspace
WireGuard tunnel to an in-cluster gateway, so code running locally can be
debugged against the rest of the application without building or deploying it.

` + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersionCmd(), newUpCmd(), newStatusCmd(), newDownCmd(), newInstallCmd(), newUninstallCmd(), newRunCmd(), newConnectCmd(), newInterceptCmd(), newLeaveCmd(), newDoctorCmd(), newTraceCmd(), newVSCodeCmd(), newVSCodeHoldCmd())
	addCompletions(root, &completer{})
	renameProgram(root, programNameFor(os.Args[0]))
	return root
}

func newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the client version",
		Long: `Print the client version (the gateway's is in ` + "`bridgetun status`" + `).

Exit codes: 0; 1 only when stdout cannot be written.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				return printJSON(cmd.OutOrStdout(), versionResult{Version: version.Version})
			}
			fmt.Fprintln(cmd.OutOrStdout(), "bridgetun", version.Version)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"version": …}`)
	return cmd
}
