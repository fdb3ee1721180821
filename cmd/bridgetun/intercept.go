package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/devflow"
	"github.com/bridgetun/bridgetun/session"
)

func newInterceptCmd() *cobra.Command {
	var (
		cf                          clusterFlags
		port, routeAs, envFile, dir string
		urlAddr, container          string
		isolate, detach, noMount    bool
		projectFile                 string
	)
	cmd := &cobra.Command{
		Use:   "intercept SERVICE --port LOCAL[:REMOTE] [--isolate [--route-as VALUE]] [--env-file F] [--mount DIR] [-- CMD ARGS...]",
		Short: "Send a Service's inbound traffic to a process on this machine",
		Long: `Intercept a Service of the connected namespace (` + "`bridgetun up`" + ` must be running):
its workload (Deployment, StatefulSet or ReplicaSet) gets a sidecar whose
iptables rules catch inbound TCP for the Service's port, and the connections
come through the tunnel to 127.0.0.1:LOCAL here. Every replica routes here.
If this machine goes away, the sidecars pass traffic to the original container
within 2 s, and the gateway restores the workload when the lease runs out.

--port LOCAL[:REMOTE]  LOCAL is where your server listens; REMOTE the Service
                       port's name or number (default: its only port).
--isolate              only HTTP/1.1 and h2c/gRPC requests whose
                       kubernetes-route-as header equals --route-as come here;
                       everyone else keeps the cluster's copy. The default
                       value is derived from your user name. A local URL that
                       adds the header is printed for your browser.

The container's environment (resolved as the kubelet does) is written with
--env-file as dotenv, or handed to CMD; its ConfigMap, Secret, downwardAPI and
projected volumes are mirrored under --mount (kubelet layout, kept current)
and $BRIDGETUN_VOLUME_ROOT points there.

The intercept lasts until Ctrl-C, until CMD exits, or — with --detach — until
` + "`bridgetun leave SERVICE`" + ` or ` + "`bridgetun down`" + `; then the workload's original pod
template comes back.

A bridgetun.yaml in the working directory may set defaults:
  version: 1
  intercept: {service: api, port: "8080:http", isolate: true, routeAs: alice,
              envFile: .env, mount: ./.bridgetun/volumes}
  env: [{name: LOG_LEVEL, value: debug}]          # added to / overriding the pod's
  volumes: [{path: /var/lib/data, local: ./data}] # copied out of the pod (needs tar there)`,
		Example: `  bridgetun intercept api --port 8080
  bridgetun intercept api --port 8080:http --isolate --env-file .env
  bridgetun intercept api --port 8080 -- go run ./cmd/api`,
		RunE: func(cmd *cobra.Command, args []string) error {
			pc, err := devflow.LoadProjectConfig(projectFile)
			if err != nil {
				return err
			}
			var command []string
			if n := cmd.ArgsLenAtDash(); n >= 0 {
				command = args[n:]
				args = args[:n]
			}
			if len(args) > 1 {
				return fmt.Errorf("intercept: one SERVICE, got %q (put a command after --)", args)
			}
			fl := devflow.InterceptFlags{
				Port:      ifChanged(cmd, "port", &port),
				Isolate:   ifChanged(cmd, "isolate", &isolate),
				RouteAs:   ifChanged(cmd, "route-as", &routeAs),
				EnvFile:   ifChanged(cmd, "env-file", &envFile),
				Mount:     ifChanged(cmd, "mount", &dir),
				Container: container,
				URLAddr:   urlAddr,
				NoMount:   noMount,
			}
			if len(args) == 1 {
				fl.Service = args[0]
			}
			cfg, err := devflow.MergeIntercept(pc, fl)
			if err != nil {
				return err
			}
			cfg.Command, cfg.Detach = command, detach
			cfg.Cluster = devflow.Cluster{Options: cf.options()}
			cfg.Session = session.NewClient(session.DefaultPaths().Socket)
			cfg.Stdio = devflow.Stdio{In: cmd.InOrStdin(), Out: cmd.OutOrStdout(), Err: cmd.ErrOrStderr()}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return devflow.Intercept(ctx, cfg)
		},
	}
	cf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&port, "port", "", "LOCAL[:REMOTE]: local port of your server, and the Service port's name or number")
	f.BoolVar(&isolate, "isolate", false, "route only requests carrying kubernetes-route-as: VALUE here")
	f.StringVar(&routeAs, "route-as", "", "the header value for --isolate (default: derived from your user name)")
	f.StringVar(&envFile, "env-file", "", "write the container's environment to this file (dotenv)")
	f.StringVar(&dir, "mount", "", "mirror the container's volumes under this directory (default: $TMPDIR/bridgetun/volumes/NS/SERVICE)")
	f.BoolVar(&noMount, "no-mount", false, "do not mirror volumes")
	f.StringVar(&container, "container", "", "the container whose environment and volumes to replicate (default: the one serving the port)")
	f.StringVar(&urlAddr, "url-addr", "", "isolated: listen address of the local URL (default 127.0.0.1, a free port)")
	f.BoolVar(&detach, "detach", false, "return once intercepting; the intercept lasts until `bridgetun leave` or `down`")
	f.StringVar(&projectFile, "config", devflow.ProjectConfigFile, "project defaults file (ignored if missing)")
	return cmd
}

// ifChanged is v if the flag was given, else nil (the project file may fill it).
func ifChanged[T any](cmd *cobra.Command, name string, v *T) *T {
	if cmd.Flags().Changed(name) {
		return v
	}
	return nil
}

func newLeaveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "leave SERVICE",
		Short: "End an intercept: the workload gets its original pod template back",
		Long: `End this session's intercept of SERVICE (one started with --detach, or from
another terminal). The gateway forgets it; when nobody else intercepts the
workload, its original pod template is restored and leave waits for the
rollout. ` + "`bridgetun down`" + ` ends every intercept the same way.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Minute)
			defer cancel()
			msg, err := session.NewClient(session.DefaultPaths().Socket).Leave(ctx, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "left %s: %s\n", args[0], msg)
			return nil
		},
	}
}
