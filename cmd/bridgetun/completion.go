package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/session"
)

// completionTimeout bounds everything one completion asks of the cluster
// and the session: a shell waits for the answer, so an unreachable cluster
// gives no candidates quickly rather than a hang.
const completionTimeout = 2 * time.Second

// completer answers dynamic shell completions (cobra's __complete) from
// the cluster and the running session. Every failure is quiet: no
// candidates, nothing printed, and file names are not offered instead.
type completer struct {
	// Connect opens the cluster; nil = cluster.Connect.
	Connect func(ctx context.Context, o cluster.Options) (*cluster.Conn, error)
	// Status asks the running session; nil = the session socket's.
	Status func(ctx context.Context) (session.Status, error)
	// Timeout bounds one completion; 0 = completionTimeout.
	Timeout time.Duration
}

// addCompletions registers c's functions on root's tree: SERVICE of
// intercept (and vscode), leave's intercepted SERVICE, run --service, and
// on every command that has them -n/--namespace, --gateway-namespace and
// --context.
func addCompletions(root *cobra.Command, c *completer) {
	for _, cmd := range root.Commands() {
		switch cmd.Name() {
		case "intercept", "vscode":
			cmd.ValidArgsFunction = c.serviceArg
		case "leave":
			cmd.ValidArgsFunction = c.interceptArg
		case "run":
			_ = cmd.RegisterFlagCompletionFunc("service", c.serviceFlag)
		}
	}
	var walk func(cmd *cobra.Command)
	walk = func(cmd *cobra.Command) {
		for flag, f := range map[string]cobra.CompletionFunc{
			"namespace": c.namespaces, "gateway-namespace": c.namespaces, "context": c.contexts,
		} {
			if cmd.LocalNonPersistentFlags().Lookup(flag) != nil {
				_ = cmd.RegisterFlagCompletionFunc(flag, f)
			}
		}
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// serviceArg completes the one SERVICE argument (nothing after it; after
// -- comes a command, so the shell's own completion).
func (c *completer) serviceArg(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	// cobra's __complete parses the line once with a "--" appended, so
	// ArgsLenAtDash is len(args) without a dash of the user's, and less
	// when words follow theirs.
	if n := cmd.ArgsLenAtDash(); n >= 0 && n < len(args) {
		return nil, cobra.ShellCompDirectiveDefault
	}
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return c.services(cmd, toComplete), cobra.ShellCompDirectiveNoFileComp
}

func (c *completer) serviceFlag(cmd *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return c.services(cmd, toComplete), cobra.ShellCompDirectiveNoFileComp
}

// services are the Services (but the gateway's own) of the namespace the
// command would use: -n, else the session's, else the context's; the
// context likewise. Each carries its ports as the description.
func (c *completer) services(cmd *cobra.Command, prefix string) []cobra.Completion {
	ctx, cancel := c.context(cmd)
	defer cancel()
	o := c.options(cmd)
	if o.Context == "" || o.Namespace == "" {
		if st, err := c.status(ctx); err == nil {
			o.Context = firstSet(o.Context, st.Context)
			o.Namespace = firstSet(o.Namespace, st.Namespace)
		}
	}
	conn, err := c.connect(ctx, o)
	if err != nil {
		return nil
	}
	list, err := conn.Client.CoreV1().Services(conn.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil
	}
	var out []cobra.Completion
	for _, s := range list.Items {
		if strings.HasPrefix(s.Name, prefix) && s.Labels[cluster.LabelName] != cluster.GatewayName {
			out = append(out, withDesc(s.Name, servicePorts(s)))
		}
	}
	slices.Sort(out)
	return out
}

// interceptArg completes leave's SERVICE with the session's intercepts.
func (c *completer) interceptArg(cmd *cobra.Command, args []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := c.context(cmd)
	defer cancel()
	st, err := c.status(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, it := range st.Intercepts {
		if strings.HasPrefix(it.Service, prefix) {
			out = append(out, cobra.CompletionWithDesc(it.Service, fmt.Sprintf("%s → 127.0.0.1:%d", it.State, it.LocalPort)))
		}
	}
	slices.Sort(out)
	return out, cobra.ShellCompDirectiveNoFileComp
}

// namespaces completes a namespace flag from the cluster (--kubeconfig and
// --context as given so far).
func (c *completer) namespaces(cmd *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	ctx, cancel := c.context(cmd)
	defer cancel()
	o := c.options(cmd)
	o.Namespace = ""
	conn, err := c.connect(ctx, o)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	list, err := conn.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, ns := range list.Items {
		if strings.HasPrefix(ns.Name, prefix) {
			out = append(out, ns.Name)
		}
	}
	slices.Sort(out)
	return out, cobra.ShellCompDirectiveNoFileComp
}

// contexts completes --context from the kubeconfig (--kubeconfig, else
// $KUBECONFIG, else ~/.kube/config); the cluster is not asked.
func (c *completer) contexts(cmd *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.options(cmd).Kubeconfig
	cfg, err := rules.Load()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for name, kc := range cfg.Contexts {
		if strings.HasPrefix(name, prefix) {
			out = append(out, cobra.CompletionWithDesc(name, "cluster "+kc.Cluster))
		}
	}
	slices.Sort(out)
	return out, cobra.ShellCompDirectiveNoFileComp
}

// options are the connection flags given so far on cmd's line.
func (c *completer) options(cmd *cobra.Command) cluster.Options {
	get := func(name string) string {
		if f := cmd.Flags().Lookup(name); f != nil {
			return f.Value.String()
		}
		return ""
	}
	return cluster.Options{Kubeconfig: get("kubeconfig"), Context: get("context"), Namespace: get("namespace")}
}

func (c *completer) context(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	d := c.Timeout
	if d <= 0 {
		d = completionTimeout
	}
	return context.WithTimeout(ctx, d)
}

func (c *completer) connect(ctx context.Context, o cluster.Options) (*cluster.Conn, error) {
	if c.Connect != nil {
		return c.Connect(ctx, o)
	}
	deadline, _ := ctx.Deadline()
	o.ProbeTimeout = time.Until(deadline)
	return cluster.Connect(ctx, o)
}

func (c *completer) status(ctx context.Context) (session.Status, error) {
	if c.Status != nil {
		return c.Status(ctx)
	}
	return session.NewClient(session.DefaultPaths().Socket).Status(ctx)
}

// servicePorts describes a Service's ports: "80/TCP (http), 9000/TCP".
func servicePorts(s corev1.Service) string {
	var ps []string
	for _, p := range s.Spec.Ports {
		d := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		if p.Name != "" {
			d += " (" + p.Name + ")"
		}
		ps = append(ps, d)
	}
	return strings.Join(ps, ", ")
}

// firstSet is a, or b when a is empty.
func firstSet(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// withDesc is name with a description for shells that show one (zsh,
// fish), or name alone when there is none.
func withDesc(name, desc string) cobra.Completion {
	if desc == "" {
		return name
	}
	return cobra.CompletionWithDesc(name, desc)
}
