package cluster

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestStuckForGood: states the kubelet resolves by itself are waited out;
// the ones that need the user fail fast.
func TestStuckForGood(t *testing.T) {
	for _, tc := range []struct {
		reason, msg string
		want        bool
	}{
		{"ContainerCreating", "", false},
		{"PodInitializing", "", false},
		{"CreateContainerConfigError", "failed to sync secret cache: timed out waiting for the condition", false},
		{"CreateContainerConfigError", "failed to sync configmap cache: timed out waiting for the condition", false},
		{"CreateContainerConfigError", `secret "bridgetun-gateway" not found`, true},
		{"CreateContainerConfigError", `couldn't find key private-key in Secret bt/bridgetun-gateway`, true},
		{"ErrImagePull", `failed to pull image "x": rpc error: code = NotFound desc = not found`, true},
		{"ErrImagePull", `pull access denied, repository does not exist`, true},
		{"ErrImagePull", `failed to pull image "x": dial tcp 10.0.0.1:443: i/o timeout`, false},
		{"ErrImagePull", `429 Too Many Requests`, false},
		{"ImagePullBackOff", `Back-off pulling image "x"`, true},
		{"ErrImageNeverPull", "image not present with pull policy of Never", true},
		{"InvalidImageName", `couldn't parse image name`, true},
		{"CrashLoopBackOff", "back-off 10s restarting failed container", true},
	} {
		got := stuckForGood(&corev1.ContainerStateWaiting{Reason: tc.reason, Message: tc.msg})
		if got != tc.want {
			t.Errorf("%s %q: got stuck-for-good %v, want %v", tc.reason, tc.msg, got, tc.want)
		}
	}
	if stuckForGood(nil) {
		t.Error("a running container (no waiting state) counts as stuck")
	}
}
