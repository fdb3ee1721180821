package cluster

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// acceptDryRuns makes cs answer a dry-run create the way the API server
// does when admission allows it: the object back, nothing stored (the
// fake tracker would store it).
func acceptDryRuns(cs *fake.Clientset) {
	cs.PrependReactor("create", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		c, ok := a.(k8stesting.CreateActionImpl)
		if !ok || !slices.Contains(c.GetCreateOptions().DryRun, metav1.DryRunAll) {
			return false, nil, nil
		}
		return true, c.GetObject(), nil
	})
}

// TestPatchWorkloadDryRun: the patched pod is created with a server-side
// dry run first; when admission refuses it, PatchWorkload returns one line
// naming the namespace, the policy and the remedy, and the workload is
// untouched.
func TestPatchWorkloadDryRun(t *testing.T) {
	podsForbidden := func(msg string) error {
		return apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "api-bridgetun-dry-run-x", errorString(msg))
	}
	for _, tc := range []struct {
		name    string
		refuse  error // the dry run's answer; nil = admitted
		wantErr []string
	}{
		{name: "admitted"},
		{name: "pod security baseline",
			refuse: podsForbidden(`violates PodSecurity "baseline:latest": non-default capabilities (container "bridgetun-init" must not include "NET_ADMIN" in securityContext.capabilities.add)`),
			wantErr: []string{`namespace "shop" enforces Pod Security "baseline:latest"`, `"NET_ADMIN"`, "nothing was patched",
				"kubectl label namespace shop pod-security.kubernetes.io/enforce=privileged --overwrite"}},
		{name: "a webhook",
			refuse:  apierrors.NewBadRequest(`admission webhook "policy.example.com" denied the request: privileged init containers are not allowed`),
			wantErr: []string{`deployment/api: namespace "shop" refuses the intercepted pods (server-side dry run)`, "policy.example.com", "nothing was patched"}},
		{name: "no right to create pods",
			refuse:  podsForbidden(`User "dev" cannot create resource "pods" in API group "" in the namespace "shop"`),
			wantErr: []string{`you need "create" on "pods" in namespace "shop"`, "nothing was patched"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := interceptWorld(t)
			var dryRuns []*corev1.Pod
			client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				c := a.(k8stesting.CreateActionImpl)
				if !slices.Contains(c.GetCreateOptions().DryRun, metav1.DryRunAll) {
					t.Errorf("a pod was created without a dry run")
					return false, nil, nil
				}
				dryRuns = append(dryRuns, c.GetObject().(*corev1.Pod))
				if tc.refuse != nil {
					return true, nil, tc.refuse
				}
				return false, nil, nil // acceptDryRuns answers
			})
			before := getDeployment(t, client, "api")
			changed, err := PatchWorkload(t.Context(), client, apiTarget(), testSidecar)
			if len(dryRuns) != 1 {
				t.Fatalf("got %d dry-run pod creates, want 1", len(dryRuns))
			}
			after := getDeployment(t, client, "api")
			if tc.refuse == nil {
				if err != nil || !changed {
					t.Fatalf("got changed=%v, %v; want true, nil", changed, err)
				}
				// The dry-run pod is the patched template.
				if diff := cmp.Diff(after.Spec.Template.Spec, dryRuns[0].Spec); diff != "" {
					t.Errorf("dry-run pod spec (-patched template +pod):\n%s", diff)
				}
				if pods, _ := client.CoreV1().Pods(testNS).List(t.Context(), metav1.ListOptions{}); slices.ContainsFunc(pods.Items, func(p corev1.Pod) bool {
					return strings.Contains(p.Name, "dry-run") || p.Name == ""
				}) {
					t.Error("the dry-run pod was stored")
				}
				return
			}
			if changed || err == nil {
				t.Fatalf("got changed=%v, %v; want false and an error", changed, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error has more than one line: %q", err)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("deployment changed by a refused patch (-before +after):\n%s", diff)
			}
			for _, a := range client.Actions() {
				if a.GetVerb() == "update" || a.GetVerb() == "patch" {
					t.Errorf("%s %s after a refused dry run", a.GetVerb(), a.GetResource().Resource)
				}
			}
		})
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }
