package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/version"
)

func newInstallCmd() *cobra.Command {
	var (
		cf              clusterFlags
		expose, output  string
		dryRun, upgrade bool
		printRBAC       bool
		subjects        []string
	)
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install (or upgrade) the in-cluster gateway; `up` does this on first use",
		Long: `Install the in-cluster gateway: a ServiceAccount, a Role and RoleBinding with
the fewest verbs it needs, a ClusterRole to verify callers (TokenReview,
SubjectAccessReview, identity CSRs), and a Deployment
running bridgetun-agent as non-root with no added capabilities. With
--expose nodeport also a UDP NodePort Service for the udp transport.
--dry-run -o yaml prints the manifests instead.

--print-rbac prints, instead of installing, what an admin grants developers of
the namespace once the gateway is installed: a Role and RoleBinding with exactly
what up and intercept use (pods, port-forward to the gateway, Services and
EndpointSlices for DNS; read of the workloads to intercept and their ConfigMaps
and Secrets for the environment; the custom verb "intercept" on Deployments,
StatefulSets and ReplicaSets, which the gateway reviews before it patches a
workload on the developer's behalf, so no "create pods" or "update"), and a
ClusterRole to create identity CSRs, which only users whose kubeconfig has no
bearer token (client certificates) need. "update" on a workload (e.g. the
built-in edit role) also lets its holder intercept it, and --force needs it.
Apply it with kubectl apply -f -.`,
		Example: `  # as an admin: install the gateway, then let the team use it
  bridgetun install -n team
  bridgetun install -n team --print-rbac --for group:team-devs | kubectl apply -f -
  bridgetun install -n team --print-rbac --for serviceaccount:team:ci --for user:alice`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if printRBAC {
				return printDeveloperRBAC(cmd.OutOrStdout(), cf, subjects)
			}
			if len(subjects) > 0 {
				return errors.New("--for goes with --print-rbac")
			}
			spec := cluster.GatewaySpec{Image: cf.gatewayImage, ExposeNodePort: expose == "nodeport", Version: version.Version}
			if expose != "" && expose != "nodeport" {
				return fmt.Errorf("--expose %q: the only choice is nodeport", expose)
			}
			if dryRun {
				if output != "yaml" {
					return errors.New("--dry-run prints manifests: add -o yaml")
				}
				spec.Namespace = cf.gatewayNamespace
				if spec.Namespace == "" {
					spec.Namespace = cf.namespace
				}
				if spec.Namespace == "" {
					spec.Namespace = "default"
				}
				b, err := cluster.GatewayYAML(spec)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			conn, err := cluster.Connect(ctx, cf.options())
			if err != nil {
				return err
			}
			spec.Namespace = cf.gatewayNamespace
			if spec.Namespace == "" {
				spec.Namespace = conn.Namespace
			}
			if spec.Policy, err = cluster.DiscoverGatewayPolicy(ctx, conn.Client, spec.Namespace, nil); err != nil {
				return err
			}
			if err := cluster.InstallGateway(ctx, conn.Client, spec, upgrade); err != nil {
				return err
			}
			pod, err := cluster.WaitGatewayReady(ctx, conn.Client, spec.Namespace)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "gateway %s ready in %q (pod %s)\n", version.Version, spec.Namespace, pod.Name)
			return nil
		},
	}
	cf.add(cmd)
	cmd.Flags().StringVar(&expose, "expose", "", "nodeport: also expose the WireGuard UDP port as a NodePort")
	cmd.Flags().BoolVar(&upgrade, "upgrade", false, "replace a gateway of another version")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the manifests instead of applying them (with -o yaml)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "with --dry-run: yaml")
	cmd.Flags().BoolVar(&printRBAC, "print-rbac", false, "print the Role and bindings an admin grants developers (YAML), install nothing")
	cmd.Flags().StringArrayVar(&subjects, "for", nil, "with --print-rbac: who gets it, user:NAME, group:NAME or serviceaccount:NS:NAME (repeatable; default group:bridgetun-developers)")
	return cmd
}

// printDeveloperRBAC writes the developers' Role and bindings for the
// gateway namespace (-n or --gateway-namespace).
func printDeveloperRBAC(w io.Writer, cf clusterFlags, subjects []string) error {
	ns := cf.gatewayNamespace
	if ns == "" {
		ns = cf.namespace
	}
	if ns == "" {
		return errors.New("--print-rbac: name the gateway's namespace with -n NS (the Role is namespaced)")
	}
	if len(subjects) == 0 {
		subjects = []string{"group:bridgetun-developers"}
	}
	var subs []rbacv1.Subject
	for _, s := range subjects {
		sub, err := cluster.ParseSubject(s)
		if err != nil {
			return fmt.Errorf("--for: %w", err)
		}
		subs = append(subs, sub)
	}
	b, err := cluster.ObjectsYAML(cluster.DeveloperRBAC(ns, subs))
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func newUninstallCmd() *cobra.Command {
	var (
		cf  clusterFlags
		all bool
	)
	cmd := &cobra.Command{
		Use:   "uninstall [--all]",
		Short: "Remove the in-cluster gateway and everything install created",
		Long: `Remove the in-cluster gateway and everything install created from the
namespace. While a workload there is still patched for an intercept (its
sidecars need the gateway), uninstall refuses and names it: end the intercepts
first (leave, down), or pass --all to restore every patched workload first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			conn, err := cluster.Connect(ctx, cf.options())
			if err != nil {
				return err
			}
			ns := cf.gatewayNamespace
			if ns == "" {
				ns = conn.Namespace
			}
			if all {
				if err := restoreAll(ctx, conn.Client, cmd.OutOrStdout()); err != nil {
					return err
				}
			}
			if err := cluster.UninstallGateway(ctx, conn.Client, ns); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "gateway removed from %q\n", ns)
			return nil
		},
	}
	cf.add(cmd)
	cmd.Flags().BoolVar(&all, "all", false, "first restore every workload bridgetun patched for an intercept, in every namespace, and wait for their patched pods to go (their relays need the gateway until then)")
	return cmd
}

// restoreAll puts back every workload carrying an intercept patch, in every
// namespace the user can list, and waits until their patched pods are gone:
// until then those pods still relay through the gateway, so removing it
// earlier would cut requests in flight.
func restoreAll(ctx context.Context, client kubernetes.Interface, out io.Writer) error {
	refs, err := cluster.PatchedWorkloads(ctx, client, "")
	if err != nil {
		return fmt.Errorf("uninstall --all: %w", err)
	}
	var errs []error
	var restored []cluster.WorkloadRef
	for _, ref := range refs {
		if _, err := cluster.RestoreWorkload(ctx, client, ref); err != nil {
			errs = append(errs, err)
			continue
		}
		restored = append(restored, ref)
		fmt.Fprintf(out, "restored %s\n", ref)
	}
	if len(refs) == 0 {
		fmt.Fprintln(out, "no patched workloads")
	}
	for _, ref := range restored {
		// The template is back: a rollout that fails is the workload's own
		// problem and no reason to keep the gateway.
		if err := cluster.WaitRollout(ctx, client, ref); err != nil {
			fmt.Fprintf(out, "warning: %s restored, but its rollout did not finish: %v\n", ref, err)
		}
	}
	return errors.Join(errs...)
}
