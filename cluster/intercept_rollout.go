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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// rolloutPoll is how often WaitRollout looks.
var rolloutPoll = 200 * time.Millisecond

// WaitRollout waits, bounded by ctx, until every replica of ref runs its
// current pod template and is ready, as `kubectl rollout status` does
// (for a StatefulSet with a rollingUpdate partition, the pods at or above
// the partition). It fails fast, naming the pod, container and reason,
// when a new pod cannot start: an image that cannot be pulled, a config
// error (a missing Secret, say), a crash loop, a failed bridgetun-init,
// pods the controller may not create (admission, quota), or a Deployment
// past its progress deadline.
func WaitRollout(ctx context.Context, client kubernetes.Interface, ref WorkloadRef) error {
	return WaitRolloutReport(ctx, client, ref, nil)
}

// WaitRolloutReport is WaitRollout that tells report each new state of
// the rollout while it waits ("1 of 2 replicas ready; pod api-7c9: ...",
// "1 old replicas pending termination"), once per change, from the calling
// goroutine; report nil = WaitRollout.
func WaitRolloutReport(ctx context.Context, client kubernetes.Interface, ref WorkloadRef, report func(state string)) error {
	check, err := rolloutCheck(ref)
	if err != nil {
		return err
	}
	t := time.NewTicker(rolloutPoll)
	defer t.Stop()
	last, told := "waiting for the rollout to start", ""
	for {
		done, state, err := check(ctx, client, ref)
		switch {
		case err == nil && done:
			return nil
		case err == nil:
		case apierrors.IsNotFound(err):
			return fmt.Errorf("%s not found: it was deleted while rolling out", ref)
		case isFailFast(err):
			return err
		case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
			return fmt.Errorf("wait for %s: %w", ref, err)
		case ctx.Err() == nil:
			state = oneLine(err) // transient: an API hiccup
		}
		if state != "" {
			last = state
		}
		if report != nil && err == nil && state != "" && state != told {
			told = state
			report(state)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: rollout not finished: %s (%w): see `kubectl -n %s describe %s/%s`",
				ref, last, ctx.Err(), ref.Namespace, strings.ToLower(ref.Kind), ref.Name)
		case <-t.C:
		}
	}
}

// rolloutFailure is a fail-fast error: the rollout will not finish by
// itself.
type rolloutFailure struct{ msg string }

func (e *rolloutFailure) Error() string { return e.msg }

func failf(format string, args ...any) error { return &rolloutFailure{fmt.Sprintf(format, args...)} }

func isFailFast(err error) bool {
	var f *rolloutFailure
	return errors.As(err, &f)
}

type checkFunc func(context.Context, kubernetes.Interface, WorkloadRef) (done bool, state string, err error)

func rolloutCheck(ref WorkloadRef) (checkFunc, error) {
	switch strings.ToLower(ref.Kind) {
	case "deployment":
		return checkDeployment, nil
	case "statefulset":
		return checkStatefulSet, nil
	case "replicaset":
		return checkReplicaSet, nil
	}
	return nil, fmt.Errorf("%s: bridgetun can intercept Deployments, StatefulSets and ReplicaSets", ref)
}

// checkDeployment: the controller has seen the spec, and the updated,
// ready and available replicas are all there with no old ones left.
func checkDeployment(ctx context.Context, client kubernetes.Interface, ref WorkloadRef) (bool, string, error) {
	d, err := client.AppsV1().Deployments(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return false, "", err
	}
	if d.Status.ObservedGeneration < d.Generation {
		return false, "waiting for the deployment controller to see the new template", nil
	}
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Reason == "ProgressDeadlineExceeded" {
			return false, "", failf("%s exceeded its progress deadline: %s", ref, oneLineS(c.Message))
		}
	}
	want := replicasOf(d.Spec.Replicas)
	rs, err := newestOwnedReplicaSet(ctx, client, d)
	if err != nil {
		return false, "", err
	}
	var pods []corev1.Pod
	if rs != nil {
		if err := replicaFailure(ref, rs.Status.Conditions); err != nil {
			return false, "", err
		}
		if pods, err = podsControlledBy(ctx, client, ref.Namespace, rs.Spec.Selector, rs.UID); err != nil {
			return false, "", err
		}
		if err := failingPod(ref, pods); err != nil {
			return false, "", err
		}
	}
	st := d.Status
	switch {
	case st.UpdatedReplicas < want:
		return false, fmt.Sprintf("%d of %d replicas updated", st.UpdatedReplicas, want), nil
	case st.Replicas > st.UpdatedReplicas:
		return false, fmt.Sprintf("%d old replicas pending termination", st.Replicas-st.UpdatedReplicas), nil
	case st.ReadyReplicas < want || st.AvailableReplicas < want:
		return false, notReady(pods, min(st.ReadyReplicas, st.AvailableReplicas), want), nil
	}
	if st.UpdatedReplicas != want || st.Replicas != want {
		return false, "", nil
	}
	// Old pods still terminating take connections until every node has
	// dropped them: done means gone, so traffic has settled on the new ones.
	if n, err := terminatingPods(ctx, client, ref.Namespace, d.Spec.Selector); err != nil || n > 0 {
		return false, fmt.Sprintf("%d old pod(s) still terminating", n), err
	}
	return true, "", nil
}

// terminatingPods counts the selector's pods that are being deleted.
func terminatingPods(ctx context.Context, client kubernetes.Interface, ns string, sel *metav1.LabelSelector) (int, error) {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return 0, err
	}
	pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: s.String()})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			n++
		}
	}
	return n, nil
}

// checkStatefulSet: the controller has seen the spec, every pod (at or
// above the partition) is at the update revision, and all are ready.
func checkStatefulSet(ctx context.Context, client kubernetes.Interface, ref WorkloadRef) (bool, string, error) {
	s, err := client.AppsV1().StatefulSets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return false, "", err
	}
	if s.Status.ObservedGeneration < s.Generation {
		return false, "waiting for the statefulset controller to see the new template", nil
	}
	want := replicasOf(s.Spec.Replicas)
	pods, err := podsControlledBy(ctx, client, ref.Namespace, s.Spec.Selector, s.UID)
	if err != nil {
		return false, "", err
	}
	pods = slices.DeleteFunc(pods, func(p corev1.Pod) bool {
		return p.Labels[appsv1.StatefulSetRevisionLabel] != s.Status.UpdateRevision
	})
	if err := failingPod(ref, pods); err != nil {
		return false, "", err
	}
	st := s.Status
	updated := want
	if ru := s.Spec.UpdateStrategy.RollingUpdate; s.Spec.UpdateStrategy.Type != appsv1.OnDeleteStatefulSetStrategyType &&
		ru != nil && ru.Partition != nil && *ru.Partition > 0 {
		updated = max(want-*ru.Partition, 0)
	}
	switch {
	case st.UpdatedReplicas < updated:
		return false, fmt.Sprintf("%d of %d replicas updated", st.UpdatedReplicas, updated), nil
	case st.ReadyReplicas < want:
		return false, notReady(pods, st.ReadyReplicas, want), nil
	case st.Replicas > want:
		return false, fmt.Sprintf("%d extra replicas pending termination", st.Replicas-want), nil
	case s.Spec.UpdateStrategy.Type != appsv1.OnDeleteStatefulSetStrategyType && updated == want && st.CurrentRevision != st.UpdateRevision:
		return false, fmt.Sprintf("waiting for revision %s to become current", st.UpdateRevision), nil
	}
	return true, "", nil
}

// checkReplicaSet: the controller has seen the spec and the ready pods
// are all from the current template (judged by the bridgetun sidecar's
// presence and the template's container names: the only difference a
// patch or restore makes), with no others left.
func checkReplicaSet(ctx context.Context, client kubernetes.Interface, ref WorkloadRef) (bool, string, error) {
	rs, err := client.AppsV1().ReplicaSets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return false, "", err
	}
	if rs.Status.ObservedGeneration < rs.Generation {
		return false, "waiting for the replicaset controller to see the new template", nil
	}
	if err := replicaFailure(ref, rs.Status.Conditions); err != nil {
		return false, "", err
	}
	want := replicasOf(rs.Spec.Replicas)
	all, err := podsControlledBy(ctx, client, ref.Namespace, rs.Spec.Selector, rs.UID)
	if err != nil {
		return false, "", err
	}
	var current []corev1.Pod
	old, ready := 0, int32(0)
	for _, p := range all {
		switch {
		case p.DeletionTimestamp != nil:
		case !fromTemplate(&p, &rs.Spec.Template):
			old++
		default:
			current = append(current, p)
			if p.Status.Phase == corev1.PodRunning && podReady(&p) {
				ready++
			}
		}
	}
	if err := failingPod(ref, current); err != nil {
		return false, "", err
	}
	switch {
	case old > 0:
		return false, fmt.Sprintf("%d pods of the old template left", old), nil
	case ready < want || rs.Status.ReadyReplicas < want:
		return false, notReady(current, ready, want), nil
	}
	return true, "", nil
}

// fromTemplate reports whether p has every container of t and has the
// sidecar exactly when t has it. Admission may add containers, so extra
// ones do not count.
func fromTemplate(p *corev1.Pod, t *corev1.PodTemplateSpec) bool {
	if hasContainer(p.Spec.Containers, SidecarContainerName) != hasContainer(t.Spec.Containers, SidecarContainerName) {
		return false
	}
	for _, c := range t.Spec.InitContainers {
		if !hasContainer(p.Spec.InitContainers, c.Name) {
			return false
		}
	}
	for _, c := range t.Spec.Containers {
		if !hasContainer(p.Spec.Containers, c.Name) {
			return false
		}
	}
	return true
}

func replicasOf(r *int32) int32 {
	if r == nil {
		return 1
	}
	return *r
}

// newestOwnedReplicaSet is d's ReplicaSet with the highest revision, or
// nil when there is none yet.
func newestOwnedReplicaSet(ctx context.Context, client kubernetes.Interface, d *appsv1.Deployment) (*appsv1.ReplicaSet, error) {
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("selector of deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	list, err := client.AppsV1().ReplicaSets(d.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list replicasets of deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	var best *appsv1.ReplicaSet
	bestRev := int64(-1)
	for i := range list.Items {
		rs := &list.Items[i]
		c := metav1.GetControllerOf(rs)
		if c == nil || c.UID != d.UID {
			continue
		}
		rev, _ := strconv.ParseInt(rs.Annotations["deployment.kubernetes.io/revision"], 10, 64)
		if rev > bestRev {
			best, bestRev = rs, rev
		}
	}
	return best, nil
}

// podsControlledBy lists the live pods matching sel whose controller is uid.
func podsControlledBy(ctx context.Context, client kubernetes.Interface, ns string, sel *metav1.LabelSelector, uid types.UID) ([]corev1.Pod, error) {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return nil, fmt.Errorf("selector: %w", err)
	}
	list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: s.String()})
	if err != nil {
		return nil, fmt.Errorf("list pods in namespace %q: %w", ns, err)
	}
	return slices.DeleteFunc(list.Items, func(p corev1.Pod) bool {
		c := metav1.GetControllerOf(&p)
		return c == nil || c.UID != uid || p.DeletionTimestamp != nil
	}), nil
}

// replicaFailure reports a ReplicaSet that cannot create pods (Pod
// Security admission refusing NET_ADMIN, a quota, ...).
func replicaFailure(ref WorkloadRef, conds []appsv1.ReplicaSetCondition) error {
	for _, c := range conds {
		if c.Type == appsv1.ReplicaSetReplicaFailure && c.Status == corev1.ConditionTrue {
			return failf("%s cannot create pods: %s: %s", ref, c.Reason, oneLineS(c.Message))
		}
	}
	return nil
}

// failingPod reports the first pod with a container that will not start
// by itself.
func failingPod(ref WorkloadRef, pods []corev1.Pod) error {
	for i := range pods {
		if err := rolloutPodFailure(ref, &pods[i]); err != nil {
			return err
		}
	}
	return nil
}

// rolloutPodFailure names the pod, container and reason when a container
// is stuck in a state that will not resolve, or bridgetun-init failed.
func rolloutPodFailure(ref WorkloadRef, p *corev1.Pod) error {
	ns := p.Namespace
	for _, cs := range p.Status.InitContainerStatuses {
		if t := cs.State.Terminated; cs.Name == InitContainerName && t != nil && t.ExitCode != 0 {
			return failf("%s: pod %s: init container %q failed: %s: see `kubectl -n %s logs %s -c %s`",
				ref, p.Name, cs.Name, termination(t), ns, p.Name, cs.Name)
		}
	}
	for _, cs := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses) {
		w := cs.State.Waiting
		if !stuckForGood(w) {
			continue
		}
		image := cs.Image
		if image == "" {
			image = specImage(p, cs.Name)
		}
		if w.Reason == "CrashLoopBackOff" {
			why := oneLineS(w.Message)
			if t := cs.LastTerminationState.Terminated; t != nil {
				why = termination(t)
			}
			return failf("%s: pod %s: container %q (image %s) keeps crashing: %s: see `kubectl -n %s logs %s -c %s --previous`",
				ref, p.Name, cs.Name, image, why, ns, p.Name, cs.Name)
		}
		return failf("%s: pod %s: container %q (image %s): %s: %s: see `kubectl -n %s describe pod %s`",
			ref, p.Name, cs.Name, image, w.Reason, clip(oneLineS(w.Message)), ns, p.Name)
	}
	return nil
}

// termination is "exit code 1 (Error): last words".
func termination(t *corev1.ContainerStateTerminated) string {
	s := fmt.Sprintf("exit code %d", t.ExitCode)
	if t.Reason != "" {
		s += " (" + t.Reason + ")"
	}
	if m := clip(oneLineS(t.Message)); m != "" {
		s += ": " + m
	}
	return s
}

// clip keeps an error line readable: the end of a long message (the
// termination log's last lines) is the part that says why.
func clip(s string) string {
	const n = 300
	if len(s) <= n {
		return s
	}
	return "..." + strings.ToValidUTF8(s[len(s)-n:], "")
}

// notReady says how many are ready and, for one that is not, why.
func notReady(pods []corev1.Pod, ready, want int32) string {
	s := fmt.Sprintf("%d of %d replicas ready", ready, want)
	for i := range pods {
		if p := &pods[i]; !podReady(p) {
			return s + "; " + podState(p)
		}
	}
	return s
}
