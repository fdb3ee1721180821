package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/cluster"
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
			pc, err := loadProjectConfig(projectFile)
			if err != nil {
				return err
			}
			service, command := pc.Intercept.Service, []string(nil)
			if n := cmd.ArgsLenAtDash(); n >= 0 {
				command = args[n:]
				args = args[:n]
			}
			switch {
			case len(args) == 1:
				service = args[0]
			case len(args) > 1:
				return fmt.Errorf("intercept: one SERVICE, got %q (put a command after --)", args)
			case service == "":
				return errors.New("intercept: name the Service to intercept (or set intercept.service in bridgetun.yaml)")
			}
			flags := cmd.Flags()
			if !flags.Changed("port") && pc.Intercept.Port != "" {
				port = pc.Intercept.Port
			}
			if !flags.Changed("isolate") && !flags.Changed("route-as") {
				isolate = pc.Intercept.Isolate
			}
			if !flags.Changed("route-as") && pc.Intercept.RouteAs != "" {
				routeAs = pc.Intercept.RouteAs
			}
			if !flags.Changed("env-file") {
				envFile = pc.Intercept.EnvFile
			}
			if !flags.Changed("mount") && pc.Intercept.Mount != "" {
				dir = pc.Intercept.Mount
			}
			if port == "" {
				return errors.New("intercept: --port LOCAL[:REMOTE] is required (LOCAL: where your server listens here)")
			}
			local, remote, err := parseInterceptPort(port)
			if err != nil {
				return err
			}
			if routeAs != "" {
				isolate = true
			}
			if isolate && routeAs == "" {
				routeAs = defaultRouteAs()
			}
			if routeAs != "" && !routeAsRE.MatchString(routeAs) {
				return fmt.Errorf("--route-as %q: use letters, digits, '.', '_' and '-' (it travels in an HTTP header)", routeAs)
			}
			out := cmd.OutOrStdout()
			sc := session.NewClient(session.DefaultPaths().Socket)
			st, err := sc.Status(cmd.Context())
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ictx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			info, err := sc.Intercept(ictx, session.InterceptSpec{
				Service: service, Port: remote, LocalPort: local, RouteAs: routeAs, Holder: holder(), URLAddr: urlAddr,
			})
			cancel()
			if err != nil {
				return err
			}
			leave := func() error {
				lctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				msg, err := sc.Leave(lctx, service)
				if err != nil {
					return fmt.Errorf("leave %s: %w", service, err)
				}
				fmt.Fprintf(out, "left %s: %s\n", service, msg)
				return nil
			}
			fmt.Fprintf(out, "intercepting %s/%s (%s, container %s port %d) → 127.0.0.1:%d\n",
				info.Namespace, service, info.Workload, info.Container, info.ContainerPort, local)
			if info.RouteAs != "" {
				fmt.Fprintf(out, "isolated: only requests with header kubernetes-route-as: %s come here\n", info.RouteAs)
				if info.LocalURL != "" {
					fmt.Fprintf(out, "local URL (adds the header): %s\n", info.LocalURL)
				}
			} else {
				fmt.Fprintln(out, "all traffic to the Service comes here")
			}

			env, mirror, err := replicate(ctx, cf, st, service, container, info, pc, envFile, dir, noMount, out)
			if err != nil {
				return errors.Join(err, leave())
			}
			if detach {
				fmt.Fprintf(out, "detached: `bridgetun leave %s` ends it (volumes were copied once, not kept current)\n", service)
				return nil
			}
			mctx, mcancel := context.WithCancel(ctx)
			mdone := make(chan struct{})
			go func() {
				defer close(mdone)
				if mirror != nil {
					_ = mirror.Run(mctx)
				}
			}()
			defer func() { mcancel(); <-mdone }()

			if len(command) > 0 {
				code, err := runWith(ctx, command, append(env, session.RunEnv(st)...), cmd)
				if lerr := leave(); lerr != nil {
					return errors.Join(err, lerr)
				}
				if err != nil {
					return err
				}
				if code != 0 {
					os.Exit(code)
				}
				return nil
			}
			fmt.Fprintln(out, "press Ctrl-C to end the intercept")
			waitInterceptEnd(ctx, sc, service)
			if ctx.Err() == nil {
				fmt.Fprintf(out, "the intercept of %s ended elsewhere (leave or down)\n", service)
				return nil
			}
			return leave()
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
	f.StringVar(&projectFile, "config", projectConfigFile, "project defaults file (ignored if missing)")
	return cmd
}

// parseInterceptPort parses LOCAL[:REMOTE].
func parseInterceptPort(s string) (local int, remote string, err error) {
	l, remote, _ := strings.Cut(s, ":")
	local, err = strconv.Atoi(l)
	if err != nil || local < 1 || local > 65535 {
		return 0, "", fmt.Errorf("--port %q: want LOCAL[:REMOTE], LOCAL a port number such as 8080", s)
	}
	return local, remote, nil
}

var routeAsRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,63}$`)

// defaultRouteAs is the user name plus a short hash of the host, so two
// machines of one user do not collide.
func defaultRouteAs() string {
	name := "user"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	name = strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9-]+`).ReplaceAllString(name, "-"))
	host, _ := os.Hostname()
	h := sha256.Sum256([]byte(host))
	return strings.Trim(name, "-") + "-" + hex.EncodeToString(h[:2])
}

func holder() string {
	name := "someone"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// replicate writes the environment file and mirrors the volumes; it returns
// the environment for CMD and the mirror to keep running.
func replicate(ctx context.Context, cf clusterFlags, st session.Status, service, container string, info session.InterceptInfo,
	pc projectConfig, envFile, dir string, noMount bool, out io.Writer) ([]string, *cluster.Mirror, error) {
	opts := cf.options()
	if opts.Context == "" {
		opts.Context = st.Context
	}
	if opts.Namespace == "" {
		opts.Namespace = st.Namespace
	}
	conn, err := cluster.Connect(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	pod, err := cluster.PodForService(ctx, conn.Client, conn.Namespace, service)
	if err != nil {
		return nil, nil, err
	}
	if container == "" {
		container = info.Container
	}
	vars, err := cluster.ContainerEnv(ctx, conn.Client, pod, container)
	if err != nil {
		return nil, nil, err
	}
	var kv [][2]string
	for _, v := range vars {
		kv = append(kv, [2]string{v.Name, v.Value})
	}
	for _, e := range pc.Env {
		kv = append(kv, [2]string{e.Name, e.Value})
	}
	var mirror *cluster.Mirror
	if !noMount {
		if dir == "" {
			dir = filepath.Join(os.TempDir(), "bridgetun", "volumes", conn.Namespace, service)
		}
		if dir, err = filepath.Abs(dir); err != nil {
			return nil, nil, err
		}
		mirror, err = cluster.NewMirror(ctx, cluster.MirrorConfig{Client: conn.Client, Pod: pod, Container: container, Dir: dir, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			return nil, nil, fmt.Errorf("mirror volumes of %s: %w", pod.Name, err)
		}
		for _, m := range mirror.Mounted() {
			fmt.Fprintf(out, "volume %s (%s) → %s\n", m.Name, m.Kind, m.LocalPath)
		}
		for _, m := range mirror.Skipped() {
			fmt.Fprintf(out, "volume %s (%s) at %s not mirrored (name it under volumes: in bridgetun.yaml to copy it)\n", m.Name, m.Kind, m.MountPath)
		}
		for _, v := range pc.Volumes {
			local := v.Local
			if local == "" {
				local = filepath.Join(dir, v.Path)
			}
			if err := cluster.CopyFromPod(ctx, conn.Config, conn.Client, pod, container, v.Path, local); err != nil {
				return nil, nil, fmt.Errorf("copy %s from pod %s: %w", v.Path, pod.Name, err)
			}
			fmt.Fprintf(out, "copied %s → %s\n", v.Path, local)
		}
		kv = append(kv, [2]string{"BRIDGETUN_VOLUME_ROOT", dir})
	}
	if envFile != "" {
		if err := os.WriteFile(envFile, dotenv(kv), 0o600); err != nil {
			return nil, nil, fmt.Errorf("--env-file %s: %w", envFile, err)
		}
		fmt.Fprintf(out, "environment of %s/%s (%d variables) written to %s\n", pod.Name, container, len(kv), envFile)
	}
	env := os.Environ()
	for _, p := range kv {
		env = append(env, p[0]+"="+p[1])
	}
	return env, mirror, nil
}

// runWith runs command with env and returns its exit code.
func runWith(ctx context.Context, command, env []string, cmd *cobra.Command) (int, error) {
	c := exec.Command(command[0], command[1:]...)
	c.Env, c.Stdin, c.Stdout, c.Stderr = env, os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
	if err := c.Start(); err != nil {
		return 0, fmt.Errorf("run %s: %w", command[0], err)
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done(): // Ctrl-C: pass it on, the intercept ends after CMD
			_ = c.Process.Signal(os.Interrupt)
		case <-done:
		}
	}()
	err := c.Wait()
	close(done)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("run %s: %w", command[0], err)
	}
	return 0, nil
}

// waitInterceptEnd returns when ctx ends or the session no longer holds the
// intercept (left elsewhere, session down).
func waitInterceptEnd(ctx context.Context, sc *session.Client, service string) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := sc.Status(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			return
		}
		held := false
		for _, it := range st.Intercepts {
			held = held || it.Service == service
		}
		if !held {
			return
		}
	}
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
