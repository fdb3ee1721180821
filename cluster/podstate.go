package cluster

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// failFastReasons are container waiting reasons that will not fix
// themselves — unless stuckForGood sees in the message that this one will.
var failFastReasons = []string{
	"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
	"CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff",
}

// transientConfigErrors mark a CreateContainerConfigError the kubelet
// retries by itself: its Secret/ConfigMap cache has not caught up yet (seen
// right after a Secret is recreated).
var transientConfigErrors = []string{"failed to sync", "secret cache", "configmap cache", "timed out waiting for the condition"}

// transientPullErrors mark an ErrImagePull that a retry can fix (a slow or
// busy registry); a missing image, a bad name or a refusal is for good.
var transientPullErrors = []string{"i/o timeout", "deadline exceeded", "tls handshake timeout", "connection reset", "too many requests", "429", "unexpected eof"}

// stuckForGood reports whether a waiting container needs the user: a
// missing image, a bad name, a crash loop, a missing Secret. States the
// kubelet resolves by itself (creating, pulling, a cache not yet synced, a
// registry timeout) are waited out within the caller's deadline.
func stuckForGood(w *corev1.ContainerStateWaiting) bool {
	if w == nil || !slices.Contains(failFastReasons, w.Reason) {
		return false
	}
	msg := strings.ToLower(w.Message)
	switch w.Reason {
	case "CreateContainerConfigError":
		return !containsAny(msg, transientConfigErrors)
	case "ErrImagePull":
		return !containsAny(msg, transientPullErrors)
	}
	return true
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
