package devflow

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/session"
)

// RunConfig is one `bridgetun run`.
type RunConfig struct {
	Command   []string // CMD ARGS...; required
	Service   string   // take the environment of the container behind this Service; "" = none
	Container string   // with Service: the container; "" = the pod's first
	// Cluster is where the pod is read (with Service only): Namespace is
	// where Service is looked up ("" = the session's; the network is the
	// session's either way); Context must be the session's ("" = it).
	Cluster Cluster
	Session StatusSource // required
	User    Identity     // whom the command runs as; nil = this process's user
	Stdio   Stdio
}

// lookupTimeout bounds run's status and environment look-ups.
const lookupTimeout = 30 * time.Second

// Run runs the command with what it needs to reach the cluster from here
// (session.RunEnv) and, with Service, the environment of the container
// behind it. The command's non-zero exit code comes back as an *ExitError.
// ctx bounds the look-ups (at most 30 s); when it ends while the command
// runs, the command gets os.Interrupt.
func Run(ctx context.Context, cfg RunConfig) error {
	if cfg.Session == nil {
		return errors.New("run: no session client (RunConfig.Session)")
	}
	if len(cfg.Command) == 0 {
		return errors.New("run: name the command to run after --")
	}
	if cfg.Service == "" && cfg.Cluster.Options.Namespace != "" {
		return errors.New("run: --namespace says where --service is looked up: add --service SVC (the network is the session's either way)")
	}
	if cfg.Service == "" && cfg.Container != "" {
		return errors.New("run: --container names a container of --service's pod: add --service SVC")
	}
	user := identityOrSelf(cfg.User)
	env, err := runEnv(ctx, cfg, user)
	if err != nil {
		return err
	}
	code, err := runCommand(ctx, cfg.Command, env, cfg.Stdio, user)
	if err != nil {
		return err
	}
	if code != 0 {
		return &ExitError{Code: code}
	}
	return nil
}

// runEnv is this process's environment (as user has it), then the
// container's (with Service), then the session's.
func runEnv(ctx context.Context, cfg RunConfig, user Identity) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	st, err := cfg.Session.Status(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkScope("run", st, cfg.Cluster.Options, false); err != nil {
		return nil, err
	}
	env := user.Env(os.Environ())
	if cfg.Service != "" {
		opts := cfg.Cluster.Options
		if opts.Namespace == "" {
			opts.Namespace = st.Namespace
		}
		if opts.Context == "" {
			opts.Context = st.Context
		}
		conn, err := cfg.Cluster.connect(ctx, opts)
		if err != nil {
			return nil, err
		}
		pod, err := cluster.PodForService(ctx, conn.Client, conn.Namespace, cfg.Service)
		if err != nil {
			return nil, err
		}
		name := cfg.Container
		if name == "" {
			name = pod.Spec.Containers[0].Name
		}
		vars, err := cluster.ContainerEnv(ctx, conn.Client, pod, name)
		if err != nil {
			return nil, err
		}
		for _, v := range vars {
			env = append(env, v.Name+"="+v.Value)
		}
	}
	return append(env, session.RunEnv(st)...), nil
}
