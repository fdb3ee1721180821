package devflow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/session"
)

// InterceptConfig is one `bridgetun intercept`. MergeIntercept fills Spec
// and Replicate from the command line and bridgetun.yaml.
type InterceptConfig struct {
	Spec      session.InterceptSpec // what to intercept; required: Service, LocalPort; Holder "" = user@host
	Replicate Replication           // what of the container is recreated here
	// Command runs while the intercept lasts; the intercept ends when it
	// exits, and its exit code becomes an *ExitError. Empty = the intercept
	// lasts until ctx ends (Ctrl-C) or it ends elsewhere (leave, down).
	Command []string
	Detach  bool // return once intercepting and replicated, without leave; Command is not run and volumes are not kept current
	// Cluster is where the pod is read; an empty Context or Namespace is
	// the session's.
	Cluster Cluster
	Session Session // required
	Stdio   Stdio
}

// Replication is what of the intercepted container is recreated here: its
// environment, resolved as the kubelet does, and its volumes.
type Replication struct {
	Container string       // whose environment and volumes; "" = the one serving the port
	EnvFile   string       // write the environment there as dotenv; "" = no file
	Mount     string       // mirror the volumes under this directory; "" = $TMPDIR/bridgetun/volumes/NS/SERVICE
	NoMount   bool         // mirror no volumes and copy none of Volumes
	Env       []EnvVar     // added after the pod's, so they win (bridgetun.yaml env:)
	Volumes   []VolumeCopy // directories copied once out of the pod (bridgetun.yaml volumes:)
}

// Intercept runs one intercept: it asks the session to intercept the
// Service, writes the container's environment (Replicate.EnvFile) and
// mirrors its volumes, then holds the intercept while Command runs, or until
// ctx ends (Ctrl-C), or until it ends elsewhere, and leaves. A failed
// intercept leaves nothing behind; a failure after it leaves. With Detach it
// returns once set up and the intercept stays. ctx bounds everything but the
// leave, which gets its own 3 minutes so that Ctrl-C still restores the
// workload; Command gets os.Interrupt when ctx ends.
func Intercept(ctx context.Context, cfg InterceptConfig) error {
	if cfg.Session == nil {
		return errors.New("intercept: no session client (InterceptConfig.Session)")
	}
	out, service, spec := cfg.Stdio.out(), cfg.Spec.Service, cfg.Spec
	if spec.Holder == "" {
		spec.Holder = holder()
	}
	st, err := cfg.Session.Status(ctx)
	if err != nil {
		return err
	}
	ictx, cancel := context.WithTimeout(ctx, opTimeout)
	info, err := cfg.Session.Intercept(ictx, spec, nil)
	cancel()
	if err != nil {
		return err
	}
	leave := func() error {
		lctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		msg, err := cfg.Session.Leave(lctx, service)
		if err != nil {
			return fmt.Errorf("leave %s: %w", service, err)
		}
		fmt.Fprintf(out, "left %s: %s\n", service, msg)
		return nil
	}
	printIntercepting(out, service, spec.LocalPort, info)

	env, mirror, err := replicate(ctx, cfg, st, info, out)
	if err != nil {
		return errors.Join(err, leave())
	}
	if cfg.Detach {
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

	if len(cfg.Command) > 0 {
		code, err := runCommand(ctx, cfg.Command, append(env, session.RunEnv(st)...), cfg.Stdio)
		if lerr := leave(); lerr != nil {
			return errors.Join(err, lerr)
		}
		if err != nil {
			return err
		}
		if code != 0 {
			return &ExitError{Code: code}
		}
		return nil
	}
	fmt.Fprintln(out, "press Ctrl-C to end the intercept")
	waitInterceptEnd(ctx, cfg.Session, service)
	if ctx.Err() == nil {
		fmt.Fprintf(out, "the intercept of %s ended elsewhere (leave or down)\n", service)
		return nil
	}
	return leave()
}

func printIntercepting(out io.Writer, service string, local int, info session.InterceptInfo) {
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
}

// replicate writes the environment file and mirrors the volumes; it returns
// the environment for Command and the mirror to keep running (nil with
// NoMount).
func replicate(ctx context.Context, cfg InterceptConfig, st session.Status, info session.InterceptInfo, out io.Writer) ([]string, *cluster.Mirror, error) {
	r, service := cfg.Replicate, cfg.Spec.Service
	opts := cfg.Cluster.Options
	if opts.Context == "" {
		opts.Context = st.Context
	}
	if opts.Namespace == "" {
		opts.Namespace = st.Namespace
	}
	conn, err := cfg.Cluster.connect(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	pod, err := cluster.PodForService(ctx, conn.Client, conn.Namespace, service)
	if err != nil {
		return nil, nil, err
	}
	container := r.Container
	if container == "" {
		container = info.Container
	}
	vars, err := cluster.ContainerEnv(ctx, conn.Client, pod, container)
	if err != nil {
		return nil, nil, err
	}
	var kv []EnvVar
	for _, v := range vars {
		kv = append(kv, EnvVar{v.Name, v.Value})
	}
	kv = append(kv, r.Env...)
	var mirror *cluster.Mirror
	if !r.NoMount {
		dir := r.Mount
		if dir == "" {
			dir = filepath.Join(session.DefaultPaths().Volumes, conn.Namespace, service)
		}
		if dir, err = filepath.Abs(dir); err != nil {
			return nil, nil, err
		}
		if mirror, err = mirrorVolumes(ctx, cfg.Cluster, conn, pod, container, dir, r.Volumes, out); err != nil {
			return nil, nil, err
		}
		kv = append(kv, EnvVar{"BRIDGETUN_VOLUME_ROOT", dir})
	}
	if r.EnvFile != "" {
		if err := os.WriteFile(r.EnvFile, dotenv(kv), 0o600); err != nil {
			return nil, nil, fmt.Errorf("--env-file %s: %w", r.EnvFile, err)
		}
		fmt.Fprintf(out, "environment of %s/%s (%d variables) written to %s\n", pod.Name, container, len(kv), r.EnvFile)
	}
	env := os.Environ()
	for _, v := range kv {
		env = append(env, v.Name+"="+v.Value)
	}
	return env, mirror, nil
}

// mirrorVolumes mirrors container's volumes under dir (absolute) and copies
// the extra directories out of the pod.
func mirrorVolumes(ctx context.Context, c Cluster, conn *cluster.Conn, pod *corev1.Pod, container, dir string, copies []VolumeCopy, out io.Writer) (*cluster.Mirror, error) {
	mirror, err := cluster.NewMirror(ctx, cluster.MirrorConfig{Client: conn.Client, Pod: pod, Container: container, Dir: dir, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("mirror volumes of %s: %w", pod.Name, err)
	}
	for _, m := range mirror.Mounted() {
		fmt.Fprintf(out, "volume %s (%s) → %s\n", m.Name, m.Kind, m.LocalPath)
	}
	for _, m := range mirror.Skipped() {
		fmt.Fprintf(out, "volume %s (%s) at %s not mirrored (name it under volumes: in bridgetun.yaml to copy it)\n", m.Name, m.Kind, m.MountPath)
	}
	for _, v := range copies {
		local := v.Local
		if local == "" {
			local = filepath.Join(dir, v.Path)
		}
		if err := c.copyFromPod(ctx, conn, pod, container, v.Path, local); err != nil {
			return nil, fmt.Errorf("copy %s from pod %s: %w", v.Path, pod.Name, err)
		}
		fmt.Fprintf(out, "copied %s → %s\n", v.Path, local)
	}
	return mirror, nil
}

// pollInterval is how often waitInterceptEnd asks whether the session still
// holds the intercept.
const pollInterval = 2 * time.Second

// waitInterceptEnd returns when ctx ends or the session no longer holds the
// intercept (left elsewhere, session down).
func waitInterceptEnd(ctx context.Context, s StatusSource, service string) {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := s.Status(ctx)
		if ctx.Err() != nil || err != nil {
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
