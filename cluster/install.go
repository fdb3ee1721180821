package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// ErrGatewayNotInstalled is returned (wrapped) when the gateway is absent.
var ErrGatewayNotInstalled = errors.New("gateway not installed")

// InstallGateway creates or updates the gateway's objects. It is idempotent.
// No Secret is made: the gateway makes its WireGuard key at start and keeps
// it in memory, so nobody with `get secrets` in the namespace can read it;
// an older install's key Secret is deleted. A gateway of another version is
// replaced only with upgrade; a NodePort Service left from an earlier
// install with ExposeNodePort is removed without it.
func InstallGateway(ctx context.Context, client kubernetes.Interface, spec GatewaySpec, upgrade bool) error {
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if spec.Version == "" {
		spec.Version = GatewaySpec{}.withDefaults().Version
	}
	ns := spec.Namespace

	existing, err := GatewayVersion(ctx, client, ns)
	switch {
	case errors.Is(err, ErrGatewayNotInstalled):
	case err != nil:
		return err
	case existing != spec.Version && !upgrade:
		have := "version " + existing
		if existing == "" {
			have = "of unknown version"
		}
		return fmt.Errorf("gateway in namespace %q is %s, this bridgetun is %s: run `bridgetun install --upgrade` to replace it", ns, have, spec.Version)
	}

	for _, o := range GatewayObjects(spec) {
		if err := createOrUpdate(ctx, client, o); err != nil {
			return fmt.Errorf("install gateway in namespace %q: %w", ns, err)
		}
	}
	// An older install kept the gateway's key (and a sidecar token) in a
	// Secret every developer could read: the new gateway makes its own.
	if _, err := client.CoreV1().Secrets(ns).Get(ctx, GatewayName, metav1.GetOptions{}); err == nil {
		if err := client.CoreV1().Secrets(ns).Delete(ctx, GatewayName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("install gateway: delete the older install's key Secret %s/%s: %w", ns, GatewayName, err)
		}
	}
	if !spec.ExposeNodePort {
		// Look first: deleting needs a permission `up` does not otherwise need.
		_, err := client.CoreV1().Services(ns).Get(ctx, GatewayName, metav1.GetOptions{})
		if err == nil {
			err = client.CoreV1().Services(ns).Delete(ctx, GatewayName, metav1.DeleteOptions{})
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("install gateway: delete stale NodePort service %s/%s: %w", ns, GatewayName, err)
		}
	}
	return nil
}

// createOrUpdate creates o, or replaces the existing object's spec (labels,
// annotations and data) with o's. Fields the server owns (a Service's
// ClusterIP and NodePort) are carried over.
func createOrUpdate(ctx context.Context, client kubernetes.Interface, o runtime.Object) error {
	create := metav1.CreateOptions{FieldManager: "bridgetun"}
	update := metav1.UpdateOptions{FieldManager: "bridgetun"}
	var err error
	switch want := o.(type) {
	case *corev1.ServiceAccount:
		c := client.CoreV1().ServiceAccounts(want.Namespace)
		err = upsert(ctx, want, c.Get, c.Create, c.Update, create, update, func(have *corev1.ServiceAccount) {
			have.AutomountServiceAccountToken = want.AutomountServiceAccountToken
		})
	case *rbacv1.Role:
		c := client.RbacV1().Roles(want.Namespace)
		err = upsert(ctx, want, c.Get, c.Create, c.Update, create, update, func(have *rbacv1.Role) {
			have.Rules = want.Rules
		})
	case *rbacv1.RoleBinding:
		c := client.RbacV1().RoleBindings(want.Namespace)
		err = upsert(ctx, want, c.Get, c.Create, c.Update, create, update, func(have *rbacv1.RoleBinding) {
			have.Subjects = want.Subjects // roleRef is immutable and never changes
		})
	case *rbacv1.ClusterRole:
		c := client.RbacV1().ClusterRoles()
		err = upsert(ctx, want, c.Get, c.Create, c.Update, create, update, func(have *rbacv1.ClusterRole) {
			have.Rules = want.Rules
		})
	case *rbacv1.ClusterRoleBinding:
		c := client.RbacV1().ClusterRoleBindings()
		err = upsert(ctx, want, c.Get, c.Create, c.Update, create, update, func(have *rbacv1.ClusterRoleBinding) {
			have.Subjects = want.Subjects
		})
	case *corev1.Secret:
		c := client.CoreV1().Secrets(want.Namespace)
		err = upsert(ctx, want, c.Get, c.Create, c.Update, create, update, func(have *corev1.Secret) {
			have.Data = want.Data
			have.Type = want.Type
		})
	case *appsv1.Deployment:
		c := client.AppsV1().Deployments(want.Namespace)
		err = upsert(ctx, want, c.Get, c.Create, c.Update, create, update, func(have *appsv1.Deployment) {
			have.Spec = want.Spec
		})
	case *corev1.Service:
		c := client.CoreV1().Services(want.Namespace)
		err = upsert(ctx, want, c.Get, c.Create, c.Update, create, update, func(have *corev1.Service) {
			ports := slices.Clone(want.Spec.Ports)
			for i := range ports {
				for _, old := range have.Spec.Ports {
					if old.Port == ports[i].Port && old.Protocol == ports[i].Protocol {
						ports[i].NodePort = old.NodePort
					}
				}
			}
			have.Spec.Type = want.Spec.Type
			have.Spec.Selector = want.Spec.Selector
			have.Spec.Ports = ports
		})
	default:
		return fmt.Errorf("unexpected object %T", o)
	}
	return err
}

// kobject is a pointer to a typed API object.
type kobject[T any] interface {
	*T
	metav1.Object
}

// upsert gets the object named like want; creates want if absent, else
// applies merge to the existing one (plus want's labels and annotations)
// and updates it.
func upsert[T any, P kobject[T]](ctx context.Context, want P,
	get func(context.Context, string, metav1.GetOptions) (P, error),
	create func(context.Context, P, metav1.CreateOptions) (P, error),
	update func(context.Context, P, metav1.UpdateOptions) (P, error),
	co metav1.CreateOptions, uo metav1.UpdateOptions, merge func(have P),
) error {
	kind := fmt.Sprintf("%T", want)
	kind = kind[strings.LastIndex(kind, ".")+1:]
	have, err := get(ctx, want.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err := create(ctx, want, co); err != nil {
			return fmt.Errorf("create %s %s: %w", kind, want.GetName(), err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get %s %s: %w", kind, want.GetName(), err)
	}
	labels, annotations := have.GetLabels(), have.GetAnnotations()
	if labels == nil {
		labels = map[string]string{}
	}
	if annotations == nil {
		annotations = map[string]string{}
	}
	for k, v := range want.GetLabels() {
		labels[k] = v
	}
	for k, v := range want.GetAnnotations() {
		annotations[k] = v
	}
	have.SetLabels(labels)
	have.SetAnnotations(annotations)
	merge(have)
	if _, err := update(ctx, have, uo); err != nil {
		return fmt.Errorf("update %s %s: %w", kind, want.GetName(), err)
	}
	return nil
}

// GatewayVersion returns the installed gateway Deployment's version
// annotation, or an error wrapping ErrGatewayNotInstalled.
func GatewayVersion(ctx context.Context, client kubernetes.Interface, ns string) (string, error) {
	d, err := client.AppsV1().Deployments(ns).Get(ctx, GatewayName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("deployment %s/%s: %w", ns, GatewayName, ErrGatewayNotInstalled)
	}
	if err != nil {
		return "", fmt.Errorf("read deployment %s/%s: %w", ns, GatewayName, err)
	}
	return d.Annotations[AnnotationVersion], nil
}

// UninstallGateway deletes everything GatewayObjects creates; absent objects
// are fine. The Deployment goes with background propagation, so its
// ReplicaSets and pods are garbage-collected. While a workload of ns is
// still patched for an intercept it refuses and deletes nothing: that
// workload's sidecars relay through the gateway.
func UninstallGateway(ctx context.Context, client kubernetes.Interface, ns string) error {
	patched, err := PatchedWorkloads(ctx, client, ns)
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if len(patched) > 0 {
		names := make([]string, len(patched))
		for i, ref := range patched {
			names[i] = ref.String()
		}
		return fmt.Errorf("uninstall refused: %s still patched for an intercept (its sidecars need the gateway): end the intercepts (`bridgetun leave SERVICE`, `bridgetun down`), or run `bridgetun uninstall --all`, which restores them first", strings.Join(names, ", "))
	}
	bg := metav1.DeletePropagationBackground
	opts := metav1.DeleteOptions{PropagationPolicy: &bg}
	dels := []struct {
		kind string
		del  func(context.Context, string, metav1.DeleteOptions) error
	}{
		{"deployment", client.AppsV1().Deployments(ns).Delete},
		{"service", client.CoreV1().Services(ns).Delete},
		{"secret", client.CoreV1().Secrets(ns).Delete}, // an older install's key Secret
		{"rolebinding", client.RbacV1().RoleBindings(ns).Delete},
		{"role", client.RbacV1().Roles(ns).Delete},
		{"serviceaccount", client.CoreV1().ServiceAccounts(ns).Delete},
	}
	var errs []error
	for _, d := range dels {
		if err := d.del(ctx, GatewayName, opts); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s %s/%s: %w", d.kind, ns, GatewayName, err))
		}
	}
	// The ClusterRole is shared by every namespace's gateway: this
	// namespace's binding goes, the role only with the last binding.
	if err := client.RbacV1().ClusterRoleBindings().Delete(ctx, gatewayClusterBindingName(ns), opts); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete clusterrolebinding %s: %w", gatewayClusterBindingName(ns), err))
	} else if err := deleteUnusedGatewayClusterRole(ctx, client); err != nil {
		errs = append(errs, err)
	}
	if err := client.CoreV1().Services(ns).Delete(ctx, RelayName, opts); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete service %s/%s: %w", ns, RelayName, err))
	}
	return errors.Join(errs...)
}

// deleteUnusedGatewayClusterRole deletes the gateways' shared ClusterRole
// once no ClusterRoleBinding refers to it.
func deleteUnusedGatewayClusterRole(ctx context.Context, client kubernetes.Interface) error {
	bindings, err := client.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{LabelSelector: GatewaySelector})
	if err != nil {
		return fmt.Errorf("list clusterrolebindings: %w", err)
	}
	for _, b := range bindings.Items {
		if b.RoleRef.Kind == "ClusterRole" && b.RoleRef.Name == GatewayName {
			return nil
		}
	}
	if err := client.RbacV1().ClusterRoles().Delete(ctx, GatewayName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete clusterrole %s: %w", GatewayName, err)
	}
	return nil
}

// waitPoll is how often WaitGatewayReady looks.
var waitPoll = 500 * time.Millisecond

// WaitGatewayReady waits, bounded by ctx, for a Running and Ready pod of the
// gateway Deployment's newest ReplicaSet and returns it. It fails fast when
// a container cannot start (image pull errors, bad config, crash loop) or
// the ReplicaSet cannot create pods, naming the image and the remedy.
func WaitGatewayReady(ctx context.Context, client kubernetes.Interface, ns string) (*corev1.Pod, error) {
	t := time.NewTicker(waitPoll)
	defer t.Stop()
	last := "no gateway pod yet"
	for {
		pod, state, err := checkGateway(ctx, client, ns)
		if pod != nil || err != nil {
			return pod, err
		}
		if state != "" {
			last = state
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("gateway in namespace %q not ready: %s (%w): see `kubectl -n %s describe deployment %s`", ns, last, ctx.Err(), ns, GatewayName)
		case <-t.C:
		}
	}
}

// checkGateway looks once. It returns the ready pod, or a description of
// what it waits for, or a fail-fast error.
func checkGateway(ctx context.Context, client kubernetes.Interface, ns string) (*corev1.Pod, string, error) {
	d, err := client.AppsV1().Deployments(ns).Get(ctx, GatewayName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, "", fmt.Errorf("deployment %s/%s: %w: run `bridgetun install`", ns, GatewayName, ErrGatewayNotInstalled)
	}
	if err != nil {
		return nil, transient(ctx, err), nil
	}
	rs, err := newestReplicaSet(ctx, client, d)
	if err != nil {
		return nil, transient(ctx, err), nil
	}
	if rs != nil {
		for _, c := range rs.Status.Conditions {
			if c.Type == appsv1.ReplicaSetReplicaFailure && c.Status == corev1.ConditionTrue {
				return nil, "", fmt.Errorf("gateway in namespace %q: cannot create pods: %s: %s", ns, c.Reason, oneLineS(c.Message))
			}
		}
	}
	pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: GatewaySelector})
	if err != nil {
		return nil, transient(ctx, err), nil
	}
	state := "waiting for the gateway pod to be created"
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || (rs != nil && !ownedBy(p.OwnerReferences, rs.UID)) {
			continue
		}
		if err := podFailure(p); err != nil {
			return nil, "", err
		}
		if p.Status.Phase == corev1.PodRunning && podReady(p) {
			return p, "", nil
		}
		state = podState(p)
	}
	return nil, state, nil
}

func transient(ctx context.Context, err error) string {
	if ctx.Err() != nil {
		return ""
	}
	return oneLine(err)
}

// newestReplicaSet is the Deployment's ReplicaSet with the highest
// revision, or nil when none exists yet.
func newestReplicaSet(ctx context.Context, client kubernetes.Interface, d *appsv1.Deployment) (*appsv1.ReplicaSet, error) {
	list, err := client.AppsV1().ReplicaSets(d.Namespace).List(ctx, metav1.ListOptions{LabelSelector: GatewaySelector})
	if err != nil {
		return nil, err
	}
	var best *appsv1.ReplicaSet
	bestRev := int64(-1)
	for i := range list.Items {
		rs := &list.Items[i]
		if !ownedBy(rs.OwnerReferences, d.UID) {
			continue
		}
		rev, _ := strconv.ParseInt(rs.Annotations["deployment.kubernetes.io/revision"], 10, 64)
		if rev > bestRev {
			best, bestRev = rs, rev
		}
	}
	return best, nil
}

func ownedBy(refs []metav1.OwnerReference, uid types.UID) bool {
	for _, r := range refs {
		if r.UID == uid {
			return true
		}
	}
	return false
}

// podFailure reports a container stuck in a state that will not resolve.
func podFailure(p *corev1.Pod) error {
	statuses := append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...)
	for _, cs := range statuses {
		w := cs.State.Waiting
		if !stuckForGood(w) {
			continue
		}
		image := cs.Image
		if image == "" {
			image = specImage(p, cs.Name)
		}
		msg := oneLineS(w.Message)
		if w.Reason == "CrashLoopBackOff" {
			if t := cs.LastTerminationState.Terminated; t != nil {
				msg = fmt.Sprintf("exit code %d %s %s", t.ExitCode, t.Reason, oneLineS(t.Message))
			}
			return fmt.Errorf("gateway pod %s/%s: container %q (image %s) keeps crashing: %s: check --gateway-image and `kubectl -n %s logs %s`",
				p.Namespace, p.Name, cs.Name, image, strings.TrimSpace(msg), p.Namespace, p.Name)
		}
		if w.Reason == "CreateContainerConfigError" {
			return fmt.Errorf("gateway pod %s/%s: container %q: %s: %s: the gateway's Secret is missing or incomplete: run `bridgetun install` (or `bridgetun up --upgrade`)",
				p.Namespace, p.Name, cs.Name, w.Reason, msg)
		}
		return fmt.Errorf("gateway pod %s/%s: container %q (image %s): %s: %s: check --gateway-image",
			p.Namespace, p.Name, cs.Name, image, w.Reason, msg)
	}
	return nil
}

func specImage(p *corev1.Pod, container string) string {
	for _, c := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		if c.Name == container {
			return c.Image
		}
	}
	return "?"
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podState says briefly why a pod is not ready yet.
func podState(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return fmt.Sprintf("pod %s unschedulable: %s", p.Name, oneLineS(c.Message))
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			return strings.TrimSpace(fmt.Sprintf("pod %s: container %s: %s %s", p.Name, cs.Name, w.Reason, oneLineS(w.Message)))
		}
	}
	return fmt.Sprintf("pod %s is %s, not ready", p.Name, p.Status.Phase)
}

func oneLineS(s string) string { return strings.Join(strings.Fields(s), " ") }
