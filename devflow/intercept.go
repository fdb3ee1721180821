package devflow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
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
	// Command is the local server: it starts with the container's
	// environment before the workload is patched, and the patch waits until
	// it listens on LocalPort. The intercept ends when it exits, and its
	// exit code becomes an *ExitError. Empty = the server must already
	// listen, and the intercept lasts until ctx ends (Ctrl-C) or it ends
	// elsewhere (leave, down).
	Command []string
	// Wait bounds how long Command has to listen on LocalPort; 0 = 60 s.
	Wait time.Duration
	// Listening says whether something accepts connections on
	// 127.0.0.1:port; nil dials it.
	Listening func(ctx context.Context, port int) bool
	Detach    bool // return once intercepting and replicated, without leave; Command is not run and volumes are not kept current
	// Cluster is where the pod is read: the session's context and
	// namespace (empty = the session's; others are refused, since the
	// session's gateway can intercept only in its own namespace).
	Cluster Cluster
	Session Session // required
	User    Identity
	Stdio   Stdio
}

// defaultWait is how long a server has to listen by default.
const defaultWait = 60 * time.Second

// Replication is what of the intercepted container is recreated here: its
// environment, resolved as the kubelet does, and its volumes.
type Replication struct {
	Container string       // whose environment and volumes; "" = the one serving the port
	EnvFile   string       // write the environment there (0600, never through a symlink); "" = no file
	EnvFormat string       // EnvFormatDotenv ("" too) or EnvFormatDocker
	Mount     string       // mirror the volumes under this directory; "" = session.DefaultPaths().Volumes/NS/SERVICE, removed when the intercept ends
	NoMount   bool         // mirror no volumes and copy none of Volumes
	Env       []EnvVar     // added after the pod's, so they win (bridgetun.yaml env:)
	Volumes   []VolumeCopy // directories copied once out of the pod (bridgetun.yaml volumes:)
}

// Intercept runs one intercept, printing its steps with their timings:
// it resolves the container's environment (Replicate.EnvFile) and mirrors
// its volumes, starts Command with them and waits until it listens on
// LocalPort (without Command, something must listen already), asks the
// session to intercept the Service, then holds the intercept while Command
// runs, or until ctx ends (Ctrl-C), or until it ends elsewhere, and leaves.
// A failure before the session patched the workload patches nothing, and
// stops Command; a failure after it leaves. With Detach it returns once set
// up and the intercept stays. ctx bounds everything but the leave, which
// gets its own 3 minutes so that Ctrl-C still restores the workload;
// Command's process group gets SIGINT when ctx ends.
func Intercept(ctx context.Context, cfg InterceptConfig) error {
	if cfg.Session == nil {
		return errors.New("intercept: no session client (InterceptConfig.Session)")
	}
	if cfg.Detach {
		cfg.Command = nil
	}
	if cfg.Listening == nil {
		cfg.Listening = dialListening
	}
	if cfg.Wait <= 0 {
		cfg.Wait = defaultWait
	}
	user := identityOrSelf(cfg.User)
	out, service, spec := cfg.Stdio.out(), cfg.Spec.Service, cfg.Spec
	if spec.Holder == "" {
		spec.Holder = holder()
	}
	st, err := cfg.Session.Status(ctx)
	if err != nil {
		return err
	}
	if err := checkScope("intercept", st, cfg.Cluster.Options, true); err != nil {
		return err
	}
	if len(cfg.Command) == 0 && !cfg.Listening(ctx, spec.LocalPort) {
		return fmt.Errorf("intercept: nothing listens on 127.0.0.1:%d: start your local server first, or give its command after -- (`bridgetun intercept %s --port %d -- CMD ARGS`)", spec.LocalPort, service, spec.LocalPort)
	}
	p := newProgress(out)
	rep, err := replicate(ctx, cfg, st, p, user)
	if err != nil {
		return err
	}
	if rep.ownDir != "" && !cfg.Detach {
		// The default mirror holds the pod's Secrets: it goes with the
		// intercept (after the mirror below has stopped writing to it).
		defer func() {
			if err := user.Do(func() error { return os.RemoveAll(rep.ownDir) }); err != nil {
				fmt.Fprintf(out, "warning: remove the volume mirror %s: %v\n", rep.ownDir, err)
			}
		}()
	}
	mctx, mcancel := context.WithCancel(ctx)
	mdone := make(chan struct{})
	go func() {
		defer close(mdone)
		if rep.mirror != nil && !cfg.Detach {
			_ = rep.mirror.Run(mctx)
		}
	}()
	defer func() { mcancel(); <-mdone }()

	var srv *server
	if len(cfg.Command) > 0 {
		env := append(rep.env, session.RunEnv(st)...)
		if srv, err = startListening(ctx, cfg, env, p, user); err != nil || srv == nil {
			return err
		}
	}
	ictx, cancel := context.WithTimeout(ctx, opTimeout)
	info, err := cfg.Session.Intercept(ictx, spec, p.event)
	cancel()
	if err != nil {
		if srv == nil {
			return err
		}
		if ctx.Err() != nil { // Ctrl-C during the rollout: the session undoes its part
			p.failed("interrupted: the session undoes the intercept; stopping %s", srv.name)
			srv.stop()
			return exitOutcome(srv.wait(context.Background()))
		}
		p.failed("not intercepted: stopping %s", srv.name)
		srv.stop()
		return err
	}
	p.finished("routed: %s of %s/%s → 127.0.0.1:%d", routeDesc(info.RouteAs), info.Namespace, service, spec.LocalPort)
	printIntercepting(out, info)
	return hold(ctx, cfg, srv, p)
}

// hold holds a routed intercept: with Detach not at all; with a server
// while it runs (holdWithServer); else until ctx ends (Ctrl-C, then it
// leaves) or the intercept ends elsewhere or is lost.
func hold(ctx context.Context, cfg InterceptConfig, srv *server, p *progress) error {
	out, service := cfg.Stdio.out(), cfg.Spec.Service
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
	if cfg.Detach {
		fmt.Fprintf(out, "detached: `bridgetun leave %s` ends it (volumes were copied once, not kept current)\n", service)
		return nil
	}
	if srv != nil {
		return holdWithServer(ctx, cfg, srv, p, leave)
	}
	fmt.Fprintln(out, "press Ctrl-C to end the intercept")
	end := waitInterceptEnd(ctx, cfg.Session, service, p.interceptState)
	switch {
	case end.lost != "":
		forgetLost(cfg.Session, service)
		return fmt.Errorf("intercept of %s lost: %s", service, end.lost)
	case ctx.Err() == nil:
		fmt.Fprintf(out, "the intercept of %s ended elsewhere (leave or down)\n", service)
		return nil
	}
	return leave()
}

// startListening starts the server and waits until it listens on the local
// port. When it does not, it has been stopped (or exited), what it last
// printed is shown, and the error says why; nothing was patched. A nil
// server with a nil error: interrupted while waiting, nothing to do.
func startListening(ctx context.Context, cfg InterceptConfig, env []string, p *progress, user Identity) (*server, error) {
	port := cfg.Spec.LocalPort
	p.waiting("waiting for %s to listen on 127.0.0.1:%d (up to %s)", commandName(cfg.Command), port, cfg.Wait)
	srv, err := startServer(cfg.Command, env, cfg.Stdio, user.Credential())
	if err != nil {
		return nil, err
	}
	err = srv.waitListening(ctx, port, cfg.Wait, cfg.Listening)
	if err == nil {
		p.done("%s listens on 127.0.0.1:%d", srv.name, port)
		return srv, nil
	}
	if !errors.Is(err, errExited) {
		srv.stop()
	}
	code, werr := srv.wait(context.Background())
	tail := srv.tail.Lines()
	errOut := writerOrDiscard(cfg.Stdio.Err)
	switch {
	case werr != nil:
		return nil, werr
	case errors.Is(err, errExited):
		p.failed("%s exited with status %d before it listened on 127.0.0.1:%d; nothing patched", srv.name, code, port)
		printTail(errOut, srv.name, tail)
		msg := fmt.Sprintf("intercept: %s exited with status %d before it listened on 127.0.0.1:%d (nothing patched): is %d the port it serves on?", srv.name, code, port, port)
		if code == 0 {
			return nil, errors.New(msg)
		}
		fmt.Fprintln(errOut, "bridgetun: "+msg)
		return nil, &ExitError{Code: code}
	case errors.Is(err, errWaitedOut):
		p.failed("%s did not listen on 127.0.0.1:%d within %s: stopped it; nothing patched", srv.name, port, cfg.Wait)
		printTail(errOut, srv.name, tail)
		return nil, fmt.Errorf("intercept: %s did not listen on 127.0.0.1:%d within %s (stopped it, nothing patched): check the port it serves on, or give it longer with --wait", srv.name, port, cfg.Wait)
	}
	// Ctrl-C while waiting: the server was interrupted; say what it did.
	p.failed("interrupted while waiting for %s; nothing patched", srv.name)
	return nil, exitOutcome(code, nil)
}

// exitOutcome is a command's result as Intercept returns it: an error, an
// *ExitError for a non-zero code, or nil.
func exitOutcome(code int, err error) error {
	switch {
	case err != nil:
		return err
	case code != 0:
		return &ExitError{Code: code}
	}
	return nil
}

// printTail shows what a server printed last, for an error about it.
func printTail(w io.Writer, name string, lines []string) {
	if len(lines) == 0 {
		fmt.Fprintf(w, "%s printed nothing\n", name)
		return
	}
	fmt.Fprintf(w, "last lines of %s:\n", name)
	for _, l := range lines {
		fmt.Fprintf(w, "  | %s\n", l)
	}
}

// holdWithServer holds the intercept while the server runs: its exit, or
// Ctrl-C (which interrupts it), ends the intercept with a leave and its
// exit code. An intercept that ends elsewhere (leave, down) stops the
// server, which has nothing to serve any more; one the session loses
// stops it too and is an error.
func holdWithServer(ctx context.Context, cfg InterceptConfig, srv *server, p *progress, leave func() error) error {
	out, service := cfg.Stdio.out(), cfg.Spec.Service
	wctx, wcancel := context.WithCancel(ctx)
	ended := make(chan interceptEnd, 1)
	go func() { ended <- waitInterceptEnd(wctx, cfg.Session, service, p.interceptState) }()
	watch := ended
	var lost string
	elsewhere := false
	for running := true; running; {
		select {
		case <-srv.done:
			running = false
		case <-ctx.Done():
			srv.stop()
			running = false
		case end := <-watch:
			watch = nil
			switch {
			case end.lost != "":
				lost = end.lost
				srv.stop()
				running = false
			case ctx.Err() == nil:
				elsewhere = true
				fmt.Fprintf(out, "the intercept of %s ended elsewhere (leave or down): stopping %s\n", service, srv.name)
				srv.stop()
				running = false
			}
		}
	}
	wcancel()
	if watch != nil {
		<-watch
	}
	code, err := srv.wait(ctx)
	switch {
	case lost != "":
		forgetLost(cfg.Session, service)
		return fmt.Errorf("intercept of %s lost: %s", service, lost)
	case elsewhere:
		return err // the server was stopped on purpose: its exit code says nothing
	}
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

// forgetLost drops a lost intercept from the session too (it keeps it in
// status until then); there is nothing left to undo, so errors are moot.
func forgetLost(s Session, service string) {
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	_, _ = s.Leave(ctx, service)
}

func printIntercepting(out io.Writer, info session.InterceptInfo) {
	if info.RouteAs != "" {
		fmt.Fprintf(out, "isolated: only requests with header kubernetes-route-as: %s come here\n", info.RouteAs)
		if info.LocalURL != "" {
			fmt.Fprintf(out, "local URL (adds the header): %s\n", info.LocalURL)
		}
	}
}

// routeDesc is what of a Service comes here.
func routeDesc(routeAs string) string {
	if routeAs == "" {
		return "all traffic"
	}
	return "requests with kubernetes-route-as: " + routeAs
}

// replication is what replicate made: the environment for Command (this
// process's, then the container's) and the mirror to keep running (nil
// with NoMount).
type replication struct {
	env    []string
	mirror *cluster.Mirror
	ownDir string // the default mirror directory (no --mount): removed when the intercept ends
}

// replicate resolves the container that serves the intercepted port and
// its environment, writes the environment file and mirrors the volumes.
// It checks the caller's rights for the intercept first, so that a refusal
// comes before anything is written.
func replicate(ctx context.Context, cfg InterceptConfig, st session.Status, p *progress, user Identity) (replication, error) {
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
		return replication{}, err
	}
	if err := cluster.CheckAccess(ctx, conn.Client, conn.Namespace, cluster.InterceptAccessChecks()); err != nil {
		return replication{}, fmt.Errorf("intercept %s: %w", service, err)
	}
	t, err := cluster.ResolveInterceptTarget(ctx, conn.Client, conn.Namespace, service, cfg.Spec.Port)
	if err != nil {
		return replication{}, err
	}
	pod, err := cluster.PodForService(ctx, conn.Client, conn.Namespace, service)
	if err != nil {
		return replication{}, err
	}
	container := r.Container
	if container == "" {
		container = t.Container
	}
	vars, err := cluster.ContainerEnv(ctx, conn.Client, pod, container)
	if err != nil {
		return replication{}, err
	}
	var kv []EnvVar
	for _, v := range vars {
		kv = append(kv, EnvVar{v.Name, v.Value})
	}
	kv = append(kv, r.Env...)
	var rep replication
	var dir string
	if !r.NoMount {
		dir = r.Mount
		if dir == "" {
			dir = filepath.Join(session.DefaultPaths().Volumes, conn.Namespace, service)
			rep.ownDir = dir
		}
		if dir, err = filepath.Abs(dir); err != nil {
			return replication{}, err
		}
		kv = append(kv, EnvVar{"BRIDGETUN_VOLUME_ROOT", dir})
	}
	if r.EnvFile != "" {
		if err := user.Do(func() error { return writePrivateFile(r.EnvFile, renderEnv(r.EnvFormat, kv)) }); err != nil {
			return replication{}, fmt.Errorf("--env-file %s: %w", r.EnvFile, err)
		}
		p.done("environment of %s/%s resolved (%d variables), written to %s", pod.Name, container, len(kv), r.EnvFile)
	} else {
		p.done("environment of %s/%s resolved (%d variables)", pod.Name, container, len(kv))
	}
	if !r.NoMount {
		if rep.mirror, err = mirrorVolumes(ctx, cfg.Cluster, conn, pod, container, dir, r.Volumes, p, user); err != nil {
			return replication{}, err
		}
	}
	rep.env = user.Env(os.Environ())
	for _, v := range kv {
		rep.env = append(rep.env, v.Name+"="+v.Value)
	}
	return rep, nil
}

// mirrorVolumes mirrors container's volumes under dir (absolute) and copies
// the extra directories out of the pod; what it wrote goes to user.
func mirrorVolumes(ctx context.Context, c Cluster, conn *cluster.Conn, pod *corev1.Pod, container, dir string, copies []VolumeCopy, p *progress, user Identity) (*cluster.Mirror, error) {
	mirror, err := cluster.NewMirror(ctx, cluster.MirrorConfig{Client: conn.Client, Pod: pod, Container: container, Dir: dir, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("mirror volumes of %s: %w", pod.Name, err)
	}
	var lines []string
	for _, m := range mirror.Mounted() {
		lines = append(lines, fmt.Sprintf("volume %s (%s) → %s", m.Name, m.Kind, m.LocalPath))
	}
	for _, m := range mirror.Skipped() {
		lines = append(lines, fmt.Sprintf("volume %s (%s) at %s not mirrored (name it under volumes: in bridgetun.yaml to copy it)", m.Name, m.Kind, m.MountPath))
	}
	for _, v := range copies {
		local := v.Local
		if local == "" {
			local = filepath.Join(dir, v.Path)
		}
		if err := c.copyFromPod(ctx, conn, pod, container, v.Path, local); err != nil {
			return nil, fmt.Errorf("copy %s from pod %s: %w", v.Path, pod.Name, err)
		}
		if err := chownTree(user, local); err != nil {
			return nil, err
		}
		lines = append(lines, fmt.Sprintf("copied %s → %s", v.Path, local))
	}
	if err := chownTree(user, dir); err != nil {
		return nil, err
	}
	if len(lines) > 0 {
		p.done("volumes of %s/%s mirrored under %s", pod.Name, container, dir)
		for _, l := range lines {
			p.info("%s", l)
		}
	}
	return mirror, nil
}

// chownTree gives root and everything under it to user (symlinks
// themselves, not their targets); a missing root is nothing to do.
func chownTree(user Identity, root string) error {
	if _, ok := user.(selfIdentity); ok {
		return nil
	}
	err := filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return user.Chown(path)
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// pollInterval is how often waitInterceptEnd asks whether the session still
// holds the intercept.
const pollInterval = 2 * time.Second

// interceptEnd is why waitInterceptEnd returned: lost (the session gave the
// intercept up: its StateReason), else ctx ended or the session no longer
// holds it.
type interceptEnd struct{ lost string }

// waitInterceptEnd returns when ctx ends, the session no longer holds the
// intercept (left elsewhere, session down), or holds it as lost. Each
// change of its state while held (reconnecting, active again) goes to
// changed.
func waitInterceptEnd(ctx context.Context, s StatusSource, service string, changed func(session.InterceptInfo)) interceptEnd {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	last := session.InterceptActive
	for {
		select {
		case <-ctx.Done():
			return interceptEnd{}
		case <-t.C:
		}
		st, err := s.Status(ctx)
		if ctx.Err() != nil || err != nil {
			return interceptEnd{}
		}
		held := false
		for _, it := range st.Intercepts {
			if it.Service != service {
				continue
			}
			if it.State == session.InterceptLost {
				reason := it.StateReason
				if reason == "" {
					reason = "the session gave it up"
				}
				return interceptEnd{lost: reason}
			}
			held = true
			if it.State != "" && it.State != last {
				last = it.State
				changed(it)
			}
		}
		if !held {
			return interceptEnd{}
		}
	}
}
