package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/cluster"
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
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			st, err := session.NewClient(session.DefaultPaths().Socket).Status(ctx)
			if err != nil {
				return err
			}
			env := os.Environ()
			if service != "" {
				opts := cf.options()
				if opts.Namespace == "" {
					opts.Namespace = st.Namespace
				}
				conn, err := cluster.Connect(ctx, opts)
				if err != nil {
					return err
				}
				pod, err := cluster.PodForService(ctx, conn.Client, conn.Namespace, service)
				if err != nil {
					return err
				}
				name := container
				if name == "" {
					name = pod.Spec.Containers[0].Name
				}
				vars, err := cluster.ContainerEnv(ctx, conn.Client, pod, name)
				if err != nil {
					return err
				}
				for _, v := range vars {
					env = append(env, v.Name+"="+v.Value)
				}
			}
			env = append(env, session.RunEnv(st)...)
			c := exec.Command(args[0], args[1:]...)
			c.Env, c.Stdin, c.Stdout, c.Stderr = env, os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
			err = c.Run()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				os.Exit(ee.ExitCode())
			}
			if err != nil {
				return fmt.Errorf("run %s: %w", args[0], err)
			}
			return nil
		},
	}
	cf.add(cmd)
	cmd.Flags().StringVar(&service, "service", "", "take the environment of the container behind this Service")
	cmd.Flags().StringVar(&container, "container", "", "with --service: the container (default: the pod's first)")
	return cmd
}
