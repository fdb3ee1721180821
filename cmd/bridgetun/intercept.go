package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/devflow"
	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/session"
)

func newInterceptCmd() *cobra.Command {
	var (
		cf                              connFlags
		port, routeAs, envFile, dir     string
		urlAddr, container, envFormat   string
		isolate, detach, noMount, force bool
		asJSON                          bool
		wait, grace                     time.Duration
		projectFile                     string
	)
	cmd := &cobra.Command{
		Use:   "intercept SERVICE --port LOCAL[:REMOTE] [--isolate [--route-as VALUE]] [--env-file F] [--mount DIR] [-- CMD ARGS...]",
		Short: "Send a Service's inbound traffic to a process on this machine",
		Long: `Intercept a Service of the session's namespace (` + "`bridgetun up`" + ` must be running):
its workload (Deployment, StatefulSet or ReplicaSet) gets a sidecar whose
iptables rules catch inbound TCP for the Service's port, and the connections
come through the tunnel to 127.0.0.1:LOCAL here. Every replica routes here.
If this machine goes away (asleep, offline), the sidecars pass traffic to the
original container within 2 s; the workload stays patched for --grace, so an
intercept whose machine comes back carries on; after that the gateway
restores the workload and the intercept is lost.

--port LOCAL[:REMOTE]  LOCAL is where your server listens; REMOTE the Service
                       port's name or number (default: its only port).
--isolate              only HTTP/1.1 and h2c/gRPC requests whose
                       kubernetes-route-as header equals --route-as come here;
                       everyone else keeps the cluster's copy. The default
                       value is derived from your user name. A local URL that
                       adds the header is printed for your browser.

First the container's environment is resolved (as the kubelet does) and
written with --env-file as dotenv (0600; a symlink there is refused), and its
ConfigMap, Secret, downwardAPI and projected volumes are mirrored under --mount
(kubelet layout, kept current; $BRIDGETUN_VOLUME_ROOT points there).

With -- CMD, CMD is your server: it starts with that environment (and the
session's, see ` + "`bridgetun run`" + `), and the workload is patched once something
listens on 127.0.0.1:LOCAL (at most --wait). If CMD exits before, its exit
code and last lines are shown and nothing is patched. Under sudo, CMD runs as
the user who ran sudo. Without CMD, your server must listen already.

Each step is printed with its time: environment, volumes, CMD listening,
workload patched, pods ready, routed. The intercept lasts until Ctrl-C, until
CMD exits (its exit code becomes bridgetun's), or — with --detach — until
` + "`bridgetun leave SERVICE`" + ` or ` + "`bridgetun down`" + `; then the workload's original pod
template comes back. With --detach --json the steps go to stderr and stdout
gets the intercept as ` + "`bridgetun status --json`" + ` lists it.

Exit codes: 0 when the intercept ended by Ctrl-C, leave or down (or, with
--detach, once it is in place); CMD's own exit code when CMD exits; 1 when it
could not be set up (the reason on stderr).

A bridgetun.yaml in the working directory may set defaults:
  version: 1
  intercept: {service: api, port: "8080:http", isolate: true, routeAs: alice,
              envFile: .env, envFormat: dotenv, mount: ./.bridgetun/volumes, wait: 2m, grace: 30m}
  env: [{name: LOG_LEVEL, value: debug}]          # added to / overriding the pod's
  volumes: [{path: /var/lib/data, local: ./data}] # copied out of the pod (needs tar there)`,
		Example: `  # your server runs already on 8080
  bridgetun intercept api --port 8080
  # bridgetun starts it with the pod's environment, then intercepts
  bridgetun intercept api --port 8080 -- go run ./cmd/api
  # only your requests (header kubernetes-route-as: alice), env in .env
  bridgetun intercept api --port 8080:http --isolate --route-as alice --env-file .env`,
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
			if asJSON && !detach {
				return errors.New("intercept: --json goes with --detach (otherwise intercept prints its steps until it ends)")
			}
			if detach && len(command) > 0 {
				return errors.New("intercept: --detach returns at once, so it cannot run a command after --: drop one of them")
			}
			if cmd.Flags().Changed("wait") && len(command) == 0 {
				return errors.New("intercept: --wait is how long the command after -- has to listen: give the command, or drop --wait")
			}
			fl := devflow.InterceptFlags{
				Port:      ifChanged(cmd, "port", &port),
				Isolate:   ifChanged(cmd, "isolate", &isolate),
				RouteAs:   ifChanged(cmd, "route-as", &routeAs),
				EnvFile:   ifChanged(cmd, "env-file", &envFile),
				EnvFormat: ifChanged(cmd, "env-format", &envFormat),
				Mount:     ifChanged(cmd, "mount", &dir),
				Wait:      ifChanged(cmd, "wait", &wait),
				Grace:     ifChanged(cmd, "grace", &grace),
				Container: container,
				URLAddr:   urlAddr,
				NoMount:   noMount,
				Force:     force,
			}
			if len(args) == 1 {
				fl.Service = args[0]
			}
			cfg, err := devflow.MergeIntercept(pc, fl)
			if err != nil {
				return err
			}
			user, err := invoker.Current()
			if err != nil {
				return fmt.Errorf("intercept: %w", err)
			}
			cfg.Command, cfg.Detach, cfg.User = command, detach, user
			cfg.Cluster = devflow.Cluster{Options: cf.options()}
			sc := session.NewClient(session.DefaultPaths().Socket)
			cfg.Session = sc
			cfg.Stdio = devflow.Stdio{In: cmd.InOrStdin(), Out: cmd.OutOrStdout(), Err: cmd.ErrOrStderr()}
			if asJSON {
				cfg.Stdio.Out = cmd.ErrOrStderr()
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := devflow.Intercept(ctx, cfg); err != nil || !asJSON {
				return err
			}
			st, err := sc.Status(ctx)
			if err != nil {
				return err
			}
			info, err := interceptOf(st, cfg.Spec.Service)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), info)
		},
	}
	cf.add(cmd,
		"must be the session's context (default: it); to work in another: bridgetun down, then bridgetun up --context CTX",
		"must be the session's namespace (default: it): intercepts happen where its gateway runs; for another: bridgetun down, then bridgetun up -n NS")
	f := cmd.Flags()
	f.StringVar(&port, "port", "", "LOCAL[:REMOTE]: local port of your server, and the Service port's name or number")
	f.BoolVar(&isolate, "isolate", false, "route only requests carrying kubernetes-route-as: VALUE here")
	f.StringVar(&routeAs, "route-as", "", "the header value for --isolate (default: derived from your user name)")
	f.StringVar(&envFile, "env-file", "", "write the container's environment to this file (mode 0600; a symlink there is refused)")
	f.StringVar(&envFormat, "env-format", devflow.EnvFormatDotenv, "format of --env-file: dotenv (KEY=\"value\" escaped, for a shell's set -a; . FILE and godotenv) or docker (KEY=value literal: docker run --env-file)")
	f.StringVar(&dir, "mount", "", "mirror the container's volumes under this directory (default: $XDG_STATE_HOME/bridgetun/volumes/NS/SERVICE, ~/.local/state/... without it; removed when the intercept ends)")
	f.BoolVar(&noMount, "no-mount", false, "do not mirror volumes")
	f.BoolVar(&force, "force", false, "take the Service over from another developer's conflicting intercept (the gateway allows it only if you may update the workload; they see it as lost)")
	f.StringVar(&container, "container", "", "the container whose environment and volumes to replicate (default: the one serving the port)")
	f.StringVar(&urlAddr, "url-addr", "", "isolated: listen address of the local URL (default 127.0.0.1, a free port)")
	f.BoolVar(&detach, "detach", false, "return once intercepting; the intercept lasts until bridgetun leave or down (no -- CMD)")
	f.BoolVar(&asJSON, "json", false, "with --detach: the steps on stderr, the intercept as JSON on stdout")
	f.DurationVar(&wait, "wait", 60*time.Second, "with -- CMD: how long CMD has to listen on LOCAL before it is stopped and nothing is patched")
	f.DurationVar(&grace, "grace", 15*time.Minute, "how long the workload stays patched while this machine is away (asleep, offline) before it is restored")
	f.StringVar(&projectFile, "config", devflow.ProjectConfigFile, "project defaults file (ignored if missing)")
	return cmd
}

// interceptOf is the session's intercept of service.
func interceptOf(st session.Status, service string) (session.InterceptInfo, error) {
	for _, it := range st.Intercepts {
		if it.Service == service {
			return it, nil
		}
	}
	return session.InterceptInfo{}, fmt.Errorf("intercept: %s is not among the session's intercepts (see bridgetun status)", service)
}

// ifChanged is v if the flag was given, else nil (the project file may fill it).
func ifChanged[T any](cmd *cobra.Command, name string, v *T) *T {
	if cmd.Flags().Changed(name) {
		return v
	}
	return nil
}

func newLeaveCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "leave SERVICE",
		Short: "End an intercept: the workload gets its original pod template back",
		Long: `End this session's intercept of SERVICE (one started with --detach, or from
another terminal). The gateway forgets it; when nobody else intercepts the
workload, its original pod template is restored and leave waits for the
rollout. ` + "`bridgetun down`" + ` ends every intercept the same way.

Exit codes: 0 when the intercept ended; 1 when no session is up, SERVICE is
not intercepted or the restore failed (the reason on stderr, also with --json).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Minute)
			defer cancel()
			msg, err := session.NewClient(session.DefaultPaths().Socket).Leave(ctx, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), leaveResult{Service: args[0], Result: msg})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "left %s: %s\n", args[0], msg)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"service": …, "result": …}`)
	return cmd
}
