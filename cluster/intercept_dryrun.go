package cluster

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// dryRunPatchedPod creates w's (patched) pod template as a Pod with a
// server-side dry run: admission — Pod Security, policy webhooks, quotas,
// limit ranges — judges the pod the workload's controller would create,
// and nothing is stored. So a refusal is reported before the workload is
// patched, not as a rollout that never finishes. It needs `create pods` in
// the namespace (InterceptAccessChecks).
func dryRunPatchedPod(ctx context.Context, client kubernetes.Interface, w *workload) error {
	tmpl := w.template
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: w.ref.Name + "-bridgetun-dry-run-",
			Namespace:    w.ref.Namespace,
			Labels:       tmpl.Labels,
			Annotations:  tmpl.Annotations,
		},
		Spec: *tmpl.Spec.DeepCopy(),
	}
	_, err := client.CoreV1().Pods(w.ref.Namespace).Create(ctx, pod, metav1.CreateOptions{
		DryRun: []string{metav1.DryRunAll}, FieldManager: "bridgetun",
	})
	if err != nil {
		return admissionRefusal(w.ref, err)
	}
	return nil
}

// podSecurityViolation matches the Pod Security admission's refusal:
// `pods "x" is forbidden: violates PodSecurity "baseline:latest": DETAILS`.
var podSecurityViolation = regexp.MustCompile(`violates PodSecurity "([^"]+)": (.*)`)

// admissionRefusal turns the dry run's error into one line naming the
// namespace, the policy and what to do.
func admissionRefusal(ref WorkloadRef, err error) error {
	ns := ref.Namespace
	msg := oneLine(err)
	if m := podSecurityViolation.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s: namespace %q enforces Pod Security %q, which refuses the intercepted pods (%s): bridgetun's init step runs as root with NET_ADMIN to redirect the port; nothing was patched: ask a cluster admin to allow it in this namespace (`kubectl label namespace %s pod-security.kubernetes.io/enforce=privileged --overwrite`, or a PodSecurity exemption)",
			shortName(ref), ns, m[1], strings.TrimSuffix(m[2], "."), ns)
	}
	if apierrors.IsForbidden(err) && strings.Contains(msg, "cannot create resource") {
		return fmt.Errorf("%s: forbidden: you need \"create\" on \"pods\" in namespace %q to check the intercepted pods before patching (ask your cluster admin for the bridgetun role): nothing was patched", shortName(ref), ns)
	}
	if apierrors.IsInvalid(err) || apierrors.IsForbidden(err) || apierrors.IsBadRequest(err) {
		return fmt.Errorf("%s: namespace %q refuses the intercepted pods (server-side dry run): %s: nothing was patched: ask a cluster admin about this namespace's admission policy, or intercept elsewhere", shortName(ref), ns, msg)
	}
	return fmt.Errorf("%s: dry run of the intercepted pod in namespace %q: %w (nothing was patched)", shortName(ref), ns, err)
}

// shortName is "deployment/api", as kubectl takes it.
func shortName(ref WorkloadRef) string { return strings.ToLower(ref.Kind) + "/" + ref.Name }
