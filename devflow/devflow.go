// Package devflow holds the developer workflows the CLI runs on top of a
// session: intercept (a Service's traffic to a local process, with the
// container's environment and volumes replicated here) and run (a local
// command with the cluster's network and a pod's environment).
//
// The workflows take their dependencies in a Config: the session as a small
// interface that *session.Client satisfies, the cluster as functions that
// default to package cluster's, and the standard streams. A command's exit
// code comes back as an *ExitError, which the caller turns into the
// process's exit status once everything deferred has run.
package devflow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/session"
)

// StatusSource reads a running session's status.
type StatusSource interface {
	// Status returns the session's status (cluster, proxies, forwards,
	// intercepts held), or session.ErrNotRunning.
	Status(ctx context.Context) (session.Status, error)
}

// Session is a running session, as the intercept workflow uses it.
type Session interface {
	StatusSource
	// Intercept starts intercepting spec.Service and returns once the
	// workload's pods run the sidecar, or why not, telling progress the
	// steps on the way (from the calling goroutine; nil = none).
	Intercept(ctx context.Context, spec session.InterceptSpec, progress func(session.InterceptEvent)) (session.InterceptInfo, error)
	// Leave ends the intercept of service, waits for the workload to be
	// restored and returns what became of it.
	Leave(ctx context.Context, service string) (string, error)
}

var _ Session = (*session.Client)(nil)

// Cluster is how a workflow reaches the pod behind a Service.
type Cluster struct {
	// Options names the kubeconfig, context and namespace; each workflow
	// says what an empty Context or Namespace becomes.
	Options cluster.Options
	// Connect opens the cluster; nil = cluster.Connect.
	Connect func(ctx context.Context, o cluster.Options) (*cluster.Conn, error)
	// CopyFromPod copies a directory out of a container (bridgetun.yaml
	// volumes:); nil = cluster.CopyFromPod.
	CopyFromPod func(ctx context.Context, cfg *rest.Config, client kubernetes.Interface, pod *corev1.Pod, container, srcPath, dstDir string) error
}

func (c Cluster) connect(ctx context.Context, o cluster.Options) (*cluster.Conn, error) {
	if c.Connect == nil {
		return cluster.Connect(ctx, o)
	}
	return c.Connect(ctx, o)
}

func (c Cluster) copyFromPod(ctx context.Context, conn *cluster.Conn, pod *corev1.Pod, container, src, dst string) error {
	if c.CopyFromPod == nil {
		return cluster.CopyFromPod(ctx, conn.Config, conn.Client, pod, container, src, dst)
	}
	return c.CopyFromPod(ctx, conn.Config, conn.Client, pod, container, src, dst)
}

// Identity is whom a workflow acts for: the user who ran `sudo bridgetun
// …` when this process is root on their behalf (*invoker.User), so that
// the commands it starts and the files it writes are theirs. nil in a
// config = this process's own identity.
type Identity interface {
	// Credential is what a started command runs as; nil = as this process.
	Credential() *invoker.Credential
	// Env is the environment a started command begins with, given this
	// process's (HOME, USER and LOGNAME the user's).
	Env(environ []string) []string
	// Do runs f with the user's file-system rights, so what f creates is
	// theirs; it just calls f when acting for no one else.
	Do(f func() error) error
	// Chown gives path (not a symlink's target) to the user; a no-op when
	// acting for no one else.
	Chown(path string) error
}

// selfIdentity is this process's own identity.
type selfIdentity struct{}

func (selfIdentity) Credential() *invoker.Credential { return nil }
func (selfIdentity) Env(environ []string) []string   { return environ }
func (selfIdentity) Do(f func() error) error         { return f() }
func (selfIdentity) Chown(string) error              { return nil }

func identityOrSelf(u Identity) Identity {
	if u == nil {
		return selfIdentity{}
	}
	return u
}

// checkScope refuses a context (and, for an intercept, a namespace) other
// than the session's: the session's tunnel and gateway are in one cluster
// and one namespace, and the intercept happens there. Empty = the
// session's.
func checkScope(what string, st session.Status, o cluster.Options, sameNamespace bool) error {
	if o.Context != "" && st.Context != "" && o.Context != st.Context {
		return fmt.Errorf("%s: the session is connected to context %q, not %q (to work in %q: `bridgetun down`, then `bridgetun up --context %s`)", what, st.Context, o.Context, o.Context, o.Context)
	}
	if sameNamespace && o.Namespace != "" && o.Namespace != st.Namespace {
		return fmt.Errorf("%s: the session is connected to namespace %q, not %q, and intercepts only there (to intercept in %q: `bridgetun down`, then `bridgetun up -n %s`)", what, st.Namespace, o.Namespace, o.Namespace, o.Namespace)
	}
	return nil
}

// Stdio are the streams a workflow prints to and hands to its command.
type Stdio struct {
	In  io.Reader // the command's stdin; nil = the null device
	Out io.Writer // what the workflow prints and the command's stdout; nil discards
	Err io.Writer // the command's stderr; nil discards
}

func (s Stdio) out() io.Writer {
	if s.Out == nil {
		return io.Discard
	}
	return s.Out
}

// ExitError is the exit code of the command a workflow ran, for the caller
// to exit with once every deferred cleanup has run. It carries no message
// of its own: the command has said what it had to.
type ExitError struct {
	Code int // the command's exit code, non-zero; -1 if a signal ended it
}

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// runCommand runs command with env (which starts with user.Env's) as
// user, in this process's group and on its terminal, and returns its exit
// code. When ctx ends (Ctrl-C, which
// the terminal also sends it), the command gets os.Interrupt and is waited
// for.
func runCommand(ctx context.Context, command, env []string, stdio Stdio, user Identity) (int, error) {
	c := exec.Command(command[0], command[1:]...)
	c.Env, c.Stdin, c.Stdout, c.Stderr = env, stdio.In, stdio.Out, stdio.Err
	c.SysProcAttr = commandProcAttr(user.Credential())
	if err := c.Start(); err != nil {
		return 0, fmt.Errorf("run %s: %w", command[0], err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.Process.Signal(os.Interrupt) })
	err := c.Wait()
	stop()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("run %s: %w", command[0], err)
	}
	return 0, nil
}

// opTimeout bounds one intercept or leave request: both wait for rollouts.
const opTimeout = 3 * time.Minute
