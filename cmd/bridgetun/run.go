package main

import (
	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/devflow"
	"github.com/bridgetun/bridgetun/session"
)

func newRunCmd() *cobra.Command {
	var (
		cf                 clusterFlags
		service, container string
	)
	cmd := &cobra.Command{
		Use:   "run [--service SVC] -- CMD [ARGS...]",
		Short: "Run a local command with the cluster's network (and a pod's environment)",
		Long: `Run CMD with what it needs to reach the cluster from this machine: in netstack
mode HTTP_PROXY, HTTPS_PROXY and ALL_PROXY pointing at the session's proxies
(names resolve in the cluster), and GRPC_DNS_RESOLVER=native. With --service,
also the environment of the container behind that Service, resolved as the
kubelet does (ConfigMap/Secret references, service links). CMD's exit code
becomes bridgetun's.`,
		Example: `  bridgetun run -- curl http://frontend/
  bridgetun run --service api -- go run ./cmd/api`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return devflow.Run(cmd.Context(), devflow.RunConfig{
				Command:   args,
				Service:   service,
				Container: container,
				Cluster:   devflow.Cluster{Options: cf.options()},
				Session:   session.NewClient(session.DefaultPaths().Socket),
				Stdio:     devflow.Stdio{In: cmd.InOrStdin(), Out: cmd.OutOrStdout(), Err: cmd.ErrOrStderr()},
			})
		},
	}
	cf.add(cmd)
	cmd.Flags().StringVar(&service, "service", "", "take the environment of the container behind this Service")
	cmd.Flags().StringVar(&container, "container", "", "with --service: the container (default: the pod's first)")
	return cmd
}
