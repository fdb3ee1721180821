package cluster

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
)

// PodBacksService reports whether pod ns/name exists with uid, runs under
// ServiceAccount sa, carries bridgetun's sidecar and is selected by
// Service ns/svc: the gateway relay's check that a sidecar's token (bound
// to its pod) belongs to a pod of the intercepted Service, so the
// credential of one Service's sidecar cannot follow another's routes. A
// missing pod or Service is (false, nil).
func PodBacksService(ctx context.Context, client kubernetes.Interface, ns, name, uid, sa, svc string) (bool, error) {
	pod, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get pod %s/%s: %w", ns, name, err)
	}
	podSA := pod.Spec.ServiceAccountName
	if podSA == "" {
		podSA = "default"
	}
	if string(pod.UID) != uid || podSA != sa || !hasContainer(pod.Spec.Containers, SidecarContainerName) {
		return false, nil
	}
	s, err := client.CoreV1().Services(ns).Get(ctx, svc, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get service %s/%s: %w", ns, svc, err)
	}
	if len(s.Spec.Selector) == 0 {
		return false, nil
	}
	return labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(pod.Labels)), nil
}
