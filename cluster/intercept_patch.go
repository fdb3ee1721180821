package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/bridgetun/bridgetun/agent/api"
)

// SidecarSpec describes the init step and sidecar PatchWorkload adds.
type SidecarSpec struct {
	Image       string            // the bridgetun-agent image
	PullPolicy  corev1.PullPolicy // "" = IfNotPresent
	Relay       string            // gateway relay host:port the sidecar reaches
	SidecarPort int32             // 0 = 15001
	ProbePort   int32             // 0 = 15002
	MetricsPort int32             // 0 = 15090
	UID         int64             // 0 = 65532: the sidecar's UID, exempt from the redirect
	// Grace is how long the gateway keeps the workload patched after its
	// workstation went silent, recorded as AnnotationGrace so a restarted
	// gateway honours it; 0 = not recorded.
	Grace time.Duration
	// PatchedBy is the patching workstation's public key, recorded as
	// AnnotationPatchedBy; "" = not recorded.
	PatchedBy string
}

func (s SidecarSpec) withDefaults() SidecarSpec {
	if s.PullPolicy == "" {
		s.PullPolicy = corev1.PullIfNotPresent
	}
	if s.SidecarPort == 0 {
		s.SidecarPort = DefaultSidecarPort
	}
	if s.ProbePort == 0 {
		s.ProbePort = DefaultProbePort
	}
	if s.MetricsPort == 0 {
		s.MetricsPort = DefaultMetricsPort
	}
	if s.UID == 0 {
		s.UID = DefaultSidecarUID
	}
	return s
}

// validate checks a defaulted spec against the intercepted port.
func (s SidecarSpec) validate(containerPort int32) error {
	for _, f := range []struct{ name, v string }{
		{"image", s.Image}, {"relay address", s.Relay},
	} {
		if f.v == "" {
			return fmt.Errorf("sidecar spec has no %s", f.name)
		}
	}
	ports := []struct {
		name string
		v    int32
	}{{"container port", containerPort}, {"sidecar port", s.SidecarPort}, {"probe port", s.ProbePort}, {"metrics port", s.MetricsPort}}
	for i, p := range ports {
		if p.v < 1 || p.v > 65535 {
			return fmt.Errorf("%s %d: want 1-65535", p.name, p.v)
		}
		for _, q := range ports[:i] {
			if q.v == p.v {
				return fmt.Errorf("%s and %s are both %d: they must differ", q.name, p.name, p.v)
			}
		}
	}
	if s.UID < 1 {
		return fmt.Errorf("sidecar uid %d: the sidecar must run as a non-root user so its connections can be exempted", s.UID)
	}
	return nil
}

// PatchWorkload adds the init step and the sidecar to t's workload and
// saves the original pod template in an annotation. The patched pod is
// first created with a server-side dry run, so an admission refusal (Pod
// Security's baseline rejects the init step's root and NET_ADMIN) is one
// line naming the namespace and policy, and nothing is patched. A
// workload already patched for the same container port is left alone
// (false, nil), unless an older bridgetun patched it (its sidecar has no
// projected relay token): that one is patched again from the saved
// original. One patched for another port is an error naming it.
//
// A Deployment and a RollingUpdate StatefulSet replace their pods
// themselves. A bare ReplicaSet and an OnDelete StatefulSet do not, so
// PatchWorkload deletes their pods that lack the sidecar and the controller
// recreates them from the new template. It returns changed=true with an
// error when the workload was patched but deleting a pod failed.
func PatchWorkload(ctx context.Context, client kubernetes.Interface, t InterceptTarget, spec SidecarSpec) (changed bool, err error) {
	ref := t.Ref()
	spec = spec.withDefaults()
	if err := spec.validate(t.ContainerPort); err != nil {
		return false, fmt.Errorf("patch %s: %w", ref, err)
	}
	var w *workload
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		changed = false
		var err error
		if w, err = getWorkload(ctx, client, ref); err != nil {
			return err
		}
		c, err := patchWorkload(w, t, spec, time.Now())
		if err != nil || !c {
			return err
		}
		// Admission judges the patched pod first: a refusal (Pod
		// Security, a webhook) leaves the workload as it was.
		if err := dryRunPatchedPod(ctx, client, w); err != nil {
			return err
		}
		if err := w.update(ctx); err != nil {
			return fmt.Errorf("update %s: %w", ref, err)
		}
		changed = true
		return nil
	})
	if err != nil {
		return false, err
	}
	return changed, rollPods(ctx, client, w, true)
}

// patchWorkload changes w in memory; false means it already carries the
// patch for t's port.
func patchWorkload(w *workload, t InterceptTarget, spec SidecarSpec, now time.Time) (bool, error) {
	tmpl := w.template
	if tmpl.Spec.HostNetwork {
		return false, fmt.Errorf("%s uses hostNetwork: its redirect rules would apply to the node, so bridgetun will not intercept it", w.ref)
	}
	added := hasContainer(tmpl.Spec.Containers, SidecarContainerName) || hasContainer(tmpl.Spec.InitContainers, InitContainerName)
	if port, ok := w.meta.Annotations[AnnotationInterceptPort]; ok && added {
		if port != strconv.Itoa(int(t.ContainerPort)) {
			return false, fmt.Errorf("%s is already intercepted on container port %s: end that intercept before intercepting port %d",
				w.ref, port, t.ContainerPort)
		}
		if hasRelayToken(tmpl) {
			return false, nil
		}
		// Patched by an older bridgetun, whose sidecar authenticated with
		// a Secret's token the gateway no longer takes: patch again from
		// the saved original.
		if _, err := unpatchWorkload(w); err != nil {
			return false, err
		}
		added = false
	}
	if added {
		return false, fmt.Errorf("%s has bridgetun's containers but no %s annotation: %s", w.ref, AnnotationInterceptPort, fixByHand(w.ref))
	}
	// Annotations without the containers: the template was replaced since
	// (by a deploy, say), so the current one is the original now.
	orig, err := json.Marshal(tmpl)
	if err != nil {
		return false, fmt.Errorf("save the pod template of %s: %w", w.ref, err)
	}
	if err := patchTemplate(tmpl, t, spec); err != nil {
		return false, fmt.Errorf("patch %s: %w", w.ref, err)
	}
	if w.meta.Annotations == nil {
		w.meta.Annotations = map[string]string{}
	}
	if w.meta.Labels == nil {
		w.meta.Labels = map[string]string{}
	}
	w.meta.Annotations[AnnotationOriginalTemplate] = string(orig)
	w.meta.Annotations[AnnotationPatchedAt] = now.UTC().Format(time.RFC3339)
	w.meta.Annotations[AnnotationInterceptPort] = strconv.Itoa(int(t.ContainerPort))
	if spec.Grace > 0 {
		w.meta.Annotations[AnnotationGrace] = spec.Grace.String()
	} else {
		delete(w.meta.Annotations, AnnotationGrace)
	}
	if spec.PatchedBy != "" {
		w.meta.Annotations[AnnotationPatchedBy] = spec.PatchedBy
	} else {
		delete(w.meta.Annotations, AnnotationPatchedBy)
	}
	w.meta.Labels[LabelPatched] = "true"
	return true, nil
}

// patchTemplate adds the init container (first) and the sidecar (last),
// adds Prometheus annotations unless the template has its own, and points
// the target container's probes on the intercepted port at the sidecar's
// probe port, so kubelet probes are never relayed to a workstation.
func patchTemplate(tmpl *corev1.PodTemplateSpec, t InterceptTarget, spec SidecarSpec) error {
	ps := &tmpl.Spec
	target := slices.IndexFunc(ps.Containers, func(c corev1.Container) bool { return c.Name == t.Container })
	if target < 0 {
		return fmt.Errorf("no container %q in the pod template", t.Container)
	}
	if slices.ContainsFunc(ps.Volumes, func(v corev1.Volume) bool { return v.Name == RelayTokenVolume }) {
		return fmt.Errorf("the pod template already has a volume named %q, which the sidecar needs", RelayTokenVolume)
	}
	for _, c := range slices.Concat(ps.InitContainers, ps.Containers) {
		for _, p := range c.Ports {
			if p.ContainerPort == spec.SidecarPort || p.ContainerPort == spec.ProbePort || p.ContainerPort == spec.MetricsPort {
				return fmt.Errorf("container %q uses port %d, which the sidecar needs: choose other sidecar ports", c.Name, p.ContainerPort)
			}
		}
	}
	rewriteProbes(&ps.Containers[target], t.ContainerPort, spec.ProbePort)
	ps.InitContainers = slices.Insert(ps.InitContainers, 0, initContainer(t, spec))
	ps.Containers = append(ps.Containers, sidecarContainer(t, spec))
	ps.Volumes = append(ps.Volumes, relayTokenVolume())

	hasProm := false
	for k := range tmpl.Annotations {
		hasProm = hasProm || strings.HasPrefix(k, "prometheus.io/")
	}
	if !hasProm {
		if tmpl.Annotations == nil {
			tmpl.Annotations = map[string]string{}
		}
		tmpl.Annotations["prometheus.io/scrape"] = "true"
		tmpl.Annotations["prometheus.io/port"] = strconv.Itoa(int(spec.MetricsPort))
	}
	return nil
}

func initContainer(t InterceptTarget, spec SidecarSpec) corev1.Container {
	return corev1.Container{
		Name:            InitContainerName,
		Image:           spec.Image,
		ImagePullPolicy: spec.PullPolicy,
		Args: []string{"init",
			"--container-port", strconv.Itoa(int(t.ContainerPort)),
			"--sidecar-port", strconv.Itoa(int(spec.SidecarPort)),
			"--sidecar-uid", strconv.FormatInt(spec.UID, 10),
		},
		Resources:                smallRequests(),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		// Root with NET_ADMIN only, to install the nat rules; the root file
		// system stays writable for iptables' lock file.
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(int64(0)),
			RunAsNonRoot:             ptr(false),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities: &corev1.Capabilities{
				Drop: []corev1.Capability{"ALL"},
				Add:  []corev1.Capability{"NET_ADMIN"},
			},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

func sidecarContainer(t InterceptTarget, spec SidecarSpec) corev1.Container {
	return corev1.Container{
		Name:            SidecarContainerName,
		Image:           spec.Image,
		ImagePullPolicy: spec.PullPolicy,
		Args: []string{"sidecar",
			"--listen", fmt.Sprintf(":%d", spec.SidecarPort),
			"--probe-listen", fmt.Sprintf(":%d", spec.ProbePort),
			"--original", fmt.Sprintf("127.0.0.1:%d", t.ContainerPort),
			"--gateway", spec.Relay,
			"--namespace", t.Namespace,
			"--service", t.Service,
			"--metrics-addr", fmt.Sprintf(":%d", spec.MetricsPort),
			"--token-file", RelayTokenPath,
		},
		// Only the sidecar mounts the relay token; the app's containers
		// never see it.
		VolumeMounts: []corev1.VolumeMount{{Name: RelayTokenVolume, MountPath: relayTokenDir, ReadOnly: true}},
		Ports: []corev1.ContainerPort{
			{Name: SidecarPortName, ContainerPort: spec.SidecarPort, Protocol: corev1.ProtocolTCP},
			{Name: SidecarMetricsName, ContainerPort: spec.MetricsPort, Protocol: corev1.ProtocolTCP},
		},
		Resources:                smallRequests(),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(spec.UID),
			RunAsGroup:               ptr(spec.UID),
			RunAsNonRoot:             ptr(true),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// relayTokenVolume is the sidecar's credential for the gateway relay: the
// pod's own ServiceAccount token for api.RelayTokenAudience, bound to the
// pod and rotated by the kubelet (it rewrites the file at 80% of the
// lifetime; the sidecar reads it for each request).
func relayTokenVolume() corev1.Volume {
	return corev1.Volume{Name: RelayTokenVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience: api.RelayTokenAudience, ExpirationSeconds: ptr(int64(RelayTokenSeconds)), Path: relayTokenFile,
		}}},
		DefaultMode: ptr(int32(0o444)), // the sidecar's UID is not the file's owner
	}}}
}

// hasRelayToken reports whether a patched template mounts the relay token
// (older bridgetun versions gave the sidecar a Secret's token instead).
func hasRelayToken(tmpl *corev1.PodTemplateSpec) bool {
	return slices.ContainsFunc(tmpl.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == RelayTokenVolume })
}

func smallRequests() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("10m"),
		corev1.ResourceMemory: resource.MustParse("16Mi"),
	}}
}

// rewriteProbes points c's httpGet and tcpSocket probes on port (by number,
// or by the name of c's port with that number) at probePort.
func rewriteProbes(c *corev1.Container, port, probePort int32) {
	matches := func(p intstr.IntOrString) bool {
		if p.Type == intstr.Int {
			return p.IntVal == port
		}
		for _, cp := range c.Ports {
			if cp.Name == p.StrVal && cp.ContainerPort == port {
				return true
			}
		}
		return false
	}
	for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if pr == nil {
			continue
		}
		if h := pr.HTTPGet; h != nil && matches(h.Port) {
			h.Port = intstr.FromInt32(probePort)
		}
		if s := pr.TCPSocket; s != nil && matches(s.Port) {
			s.Port = intstr.FromInt32(probePort)
		}
	}
}

// RestoreWorkload puts the pod template saved by PatchWorkload back,
// exactly, and removes bridgetun's annotations and label. A workload that
// is not patched or does not exist is (false, nil). When the template no
// longer has the sidecar (it was replaced since the patch, by a deploy,
// say), only the annotations and label go and the newer template stays.
// Pods of a bare ReplicaSet or OnDelete StatefulSet that still have the
// sidecar are deleted, as in PatchWorkload.
func RestoreWorkload(ctx context.Context, client kubernetes.Interface, ref WorkloadRef) (restored bool, err error) {
	var w *workload
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		restored = false
		var err error
		w, err = getWorkload(ctx, client, ref)
		if apierrors.IsNotFound(err) {
			w = nil
			return nil
		}
		if err != nil {
			return err
		}
		r, err := unpatchWorkload(w)
		if err != nil || !r {
			return err
		}
		if err := w.update(ctx); err != nil {
			return fmt.Errorf("update %s: %w", w.ref, err)
		}
		restored = true
		return nil
	})
	if err != nil || w == nil {
		return false, err
	}
	return restored, rollPods(ctx, client, w, false)
}

// unpatchWorkload undoes patchWorkload in memory; false means w carries
// no trace of it.
func unpatchWorkload(w *workload) (bool, error) {
	a := w.meta.Annotations
	saved, hasSaved := a[AnnotationOriginalTemplate]
	_, hasPort := a[AnnotationInterceptPort]
	_, hasAt := a[AnnotationPatchedAt]
	_, hasLabel := w.meta.Labels[LabelPatched]
	added := hasContainer(w.template.Spec.Containers, SidecarContainerName) || hasContainer(w.template.Spec.InitContainers, InitContainerName)
	if !hasSaved && !hasPort && !hasAt && !hasLabel && !added {
		return false, nil
	}
	if added {
		if !hasSaved {
			return false, fmt.Errorf("%s has bridgetun's containers but no saved template (annotation %s): %s",
				w.ref, AnnotationOriginalTemplate, fixByHand(w.ref))
		}
		var orig corev1.PodTemplateSpec
		if err := json.Unmarshal([]byte(saved), &orig); err != nil {
			return false, fmt.Errorf("%s: annotation %s is not a pod template (%v): %s",
				w.ref, AnnotationOriginalTemplate, err, fixByHand(w.ref))
		}
		*w.template = orig
	}
	for _, k := range []string{AnnotationOriginalTemplate, AnnotationPatchedAt, AnnotationInterceptPort, AnnotationGrace, AnnotationPatchedBy} {
		delete(w.meta.Annotations, k)
	}
	delete(w.meta.Labels, LabelPatched)
	if len(w.meta.Annotations) == 0 {
		w.meta.Annotations = nil
	}
	if len(w.meta.Labels) == 0 {
		w.meta.Labels = nil
	}
	return true, nil
}

// fixByHand is the remedy when bridgetun cannot tell the original template.
func fixByHand(r WorkloadRef) string {
	kn := strings.ToLower(r.Kind) + "/" + r.Name
	return fmt.Sprintf("re-apply the workload's manifest, then `kubectl -n %s annotate %s %s- %s- %s-` and `kubectl -n %s label %s %s-`",
		r.Namespace, kn, AnnotationOriginalTemplate, AnnotationPatchedAt, AnnotationInterceptPort, r.Namespace, kn, LabelPatched)
}

// WorkloadPatchedFor reports whether ref's pod template carries bridgetun's
// sidecar for containerPort: an intercept that was away re-attaches without
// a rollout when it does. A missing workload is (false, nil).
func WorkloadPatchedFor(ctx context.Context, client kubernetes.Interface, ref WorkloadRef, containerPort int32) (bool, error) {
	w, err := getWorkload(ctx, client, ref)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return hasContainer(w.template.Spec.Containers, SidecarContainerName) && hasRelayToken(w.template) &&
		w.meta.Annotations[AnnotationInterceptPort] == strconv.Itoa(int(containerPort)), nil
}

// PatchedWorkloads lists the workloads carrying bridgetun's patch label in
// ns ("" = all namespaces), sorted by namespace, kind and name.
func PatchedWorkloads(ctx context.Context, client kubernetes.Interface, ns string) ([]WorkloadRef, error) {
	opts := metav1.ListOptions{LabelSelector: LabelPatched + "=true"}
	var out []WorkloadRef
	deps, err := client.AppsV1().Deployments(ns).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list patched deployments%s: %w", inNamespace(ns), err)
	}
	for i := range deps.Items {
		out = append(out, refOf(KindDeployment, &deps.Items[i].ObjectMeta))
	}
	sets, err := client.AppsV1().StatefulSets(ns).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list patched statefulsets%s: %w", inNamespace(ns), err)
	}
	for i := range sets.Items {
		out = append(out, refOf(KindStatefulSet, &sets.Items[i].ObjectMeta))
	}
	rss, err := client.AppsV1().ReplicaSets(ns).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list patched replicasets%s: %w", inNamespace(ns), err)
	}
	for i := range rss.Items {
		if metav1.GetControllerOf(&rss.Items[i]) == nil { // a Deployment's are its business
			out = append(out, refOf(KindReplicaSet, &rss.Items[i].ObjectMeta))
		}
	}
	slices.SortFunc(out, func(a, b WorkloadRef) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}

func inNamespace(ns string) string {
	if ns == "" {
		return " in all namespaces"
	}
	return fmt.Sprintf(" in namespace %q", ns)
}

// workload is a fetched Deployment, StatefulSet or ReplicaSet seen through
// the parts bridgetun reads and writes; the pointers point into it.
type workload struct {
	ref      WorkloadRef
	meta     *metav1.ObjectMeta
	template *corev1.PodTemplateSpec
	selector *metav1.LabelSelector
	replicas *int32
	// rollsByDeletion: a new template does not replace running pods
	// (a bare ReplicaSet, an OnDelete StatefulSet).
	rollsByDeletion bool
	update          func(context.Context) error // writes the object back
}

var updateOpts = metav1.UpdateOptions{FieldManager: "bridgetun"}

// getWorkload fetches ref; a missing one is an error for which
// apierrors.IsNotFound holds.
func getWorkload(ctx context.Context, client kubernetes.Interface, ref WorkloadRef) (*workload, error) {
	apps := client.AppsV1()
	var w *workload
	var err error
	switch strings.ToLower(ref.Kind) {
	case "deployment":
		var d *appsv1.Deployment
		if d, err = apps.Deployments(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{}); err == nil {
			w = deploymentWorkload(client, d)
		}
	case "statefulset":
		var s *appsv1.StatefulSet
		if s, err = apps.StatefulSets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{}); err == nil {
			w = statefulSetWorkload(client, s)
		}
	case "replicaset":
		var rs *appsv1.ReplicaSet
		if rs, err = apps.ReplicaSets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{}); err == nil {
			w = replicaSetWorkload(client, rs)
		}
	default:
		return nil, fmt.Errorf("%s: bridgetun can intercept Deployments, StatefulSets and ReplicaSets", ref)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", ref, err)
	}
	return w, nil
}

func deploymentWorkload(client kubernetes.Interface, d *appsv1.Deployment) *workload {
	return &workload{
		ref: refOf(KindDeployment, &d.ObjectMeta), meta: &d.ObjectMeta, template: &d.Spec.Template,
		selector: d.Spec.Selector, replicas: d.Spec.Replicas,
		update: func(ctx context.Context) error {
			_, err := client.AppsV1().Deployments(d.Namespace).Update(ctx, d, updateOpts)
			return err
		},
	}
}

func statefulSetWorkload(client kubernetes.Interface, s *appsv1.StatefulSet) *workload {
	return &workload{
		ref: refOf(KindStatefulSet, &s.ObjectMeta), meta: &s.ObjectMeta, template: &s.Spec.Template,
		selector: s.Spec.Selector, replicas: s.Spec.Replicas,
		rollsByDeletion: s.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType,
		update: func(ctx context.Context) error {
			_, err := client.AppsV1().StatefulSets(s.Namespace).Update(ctx, s, updateOpts)
			return err
		},
	}
}

func replicaSetWorkload(client kubernetes.Interface, rs *appsv1.ReplicaSet) *workload {
	return &workload{
		ref: refOf(KindReplicaSet, &rs.ObjectMeta), meta: &rs.ObjectMeta, template: &rs.Spec.Template,
		selector: rs.Spec.Selector, replicas: rs.Spec.Replicas,
		rollsByDeletion: true,
		update: func(ctx context.Context) error {
			_, err := client.AppsV1().ReplicaSets(rs.Namespace).Update(ctx, rs, updateOpts)
			return err
		},
	}
}

func refOf(kind string, m *metav1.ObjectMeta) WorkloadRef {
	at, _ := time.Parse(time.RFC3339, m.Annotations[AnnotationPatchedAt])
	grace, _ := time.ParseDuration(m.Annotations[AnnotationGrace])
	return WorkloadRef{Namespace: m.Namespace, Kind: kind, Name: m.Name, PatchedAt: at, Grace: max(grace, 0), PatchedBy: m.Annotations[AnnotationPatchedBy]}
}

// rollPods deletes w's live pods whose sidecar presence is not
// wantSidecar (with wantSidecar, an older bridgetun's sidecar without the
// relay token counts as none), when w does not replace them itself; its
// controller recreates them from the template.
func rollPods(ctx context.Context, client kubernetes.Interface, w *workload, wantSidecar bool) error {
	if !w.rollsByDeletion {
		return nil
	}
	pods, err := ownedPods(ctx, client, w)
	if err != nil {
		return fmt.Errorf("%s: %w: delete its pods by hand to roll them", w.ref, err)
	}
	var errs []error
	for _, p := range pods {
		has := hasContainer(p.Spec.Containers, SidecarContainerName)
		if wantSidecar {
			has = has && slices.ContainsFunc(p.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == RelayTokenVolume })
		}
		if p.DeletionTimestamp != nil || has == wantSidecar {
			continue
		}
		err := client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete pod %s/%s of %s (to replace it from the new template): %w", p.Namespace, p.Name, w.ref, err))
		}
	}
	return errors.Join(errs...)
}

// ownedPods lists the pods w controls.
func ownedPods(ctx context.Context, client kubernetes.Interface, w *workload) ([]corev1.Pod, error) {
	sel, err := metav1.LabelSelectorAsSelector(w.selector)
	if err != nil {
		return nil, fmt.Errorf("selector of %s: %w", w.ref, err)
	}
	list, err := client.CoreV1().Pods(w.ref.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list pods of %s: %w", w.ref, err)
	}
	return slices.DeleteFunc(list.Items, func(p corev1.Pod) bool {
		c := metav1.GetControllerOf(&p)
		return c == nil || c.Kind != w.ref.Kind || c.Name != w.ref.Name || c.UID != w.meta.UID
	}), nil
}

func hasContainer(cs []corev1.Container, name string) bool {
	return slices.ContainsFunc(cs, func(c corev1.Container) bool { return c.Name == name })
}
