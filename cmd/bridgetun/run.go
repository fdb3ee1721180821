package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/devflow"
	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/session"
)

func newRunCmd() *cobra.Command {
	var (
		cf                 connFlags
		service, container string
	)
	cmd := &cobra.Command{
		Use:   "run [--service SVC [-n NS] [--container C]] -- CMD [ARGS...]",
		Short: "Run a local command with the cluster's network (and a pod's environment)",
		Long: `Run CMD with what it needs to reach the session's cluster from this machine:
in netstack mode HTTP_PROXY, HTTPS_PROXY and ALL_PROXY pointing at the
session's proxies (names resolve in the cluster; with up's --socks-auth or
--http-proxy-auth the URLs carry the credentials), and GRPC_DNS_RESOLVER=native.
With --service, also the environment of the container behind that Service,
resolved as the kubelet does (ConfigMap/Secret references, service links);
-n says which namespace the Service is in (default: the session's; the
network is the session's either way). CMD runs in the foreground on this
terminal (under sudo, as the user who ran sudo), and its exit code becomes
bridgetun's.`,
		Example: `  bridgetun run -- curl http://frontend/
  bridgetun run --service api -- go run ./cmd/api
  bridgetun run --service db -n shared -- psql`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if n := cmd.ArgsLenAtDash(); n > 0 {
				return fmt.Errorf("run: put the whole command after -- (got %q before it)", args[:n])
			}
			user, err := invoker.Current()
			if err != nil {
				return fmt.Errorf("run: %w", err)
			}
			return devflow.Run(cmd.Context(), devflow.RunConfig{
				Command:   args,
				Service:   service,
				Container: container,
				Cluster:   devflow.Cluster{Options: cf.options()},
				Session:   session.NewClient(session.DefaultPaths().Socket),
				User:      user,
				Stdio:     devflow.Stdio{In: cmd.InOrStdin(), Out: cmd.OutOrStdout(), Err: cmd.ErrOrStderr()},
			})
		},
	}
	cf.add(cmd,
		"must be the session's context (default: it)",
		"with --service: the Service's namespace (default: the session's)")
	cmd.Flags().StringVar(&service, "service", "", "take the environment of the container behind this Service")
	cmd.Flags().StringVar(&container, "container", "", "with --service: the container (default: the pod's first)")
	return cmd
}
