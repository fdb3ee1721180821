package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

var (
	apiRef    = WorkloadRef{Namespace: testNS, Kind: KindDeployment, Name: "api"}
	dbRef     = WorkloadRef{Namespace: testNS, Kind: KindStatefulSet, Name: "db"}
	legacyRef = WorkloadRef{Namespace: testNS, Kind: KindReplicaSet, Name: "legacy"}
)

func readyPodStatus() corev1.PodStatus {
	return corev1.PodStatus{
		Phase:      corev1.PodRunning,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
}

// stuck is a pending pod whose container waits for reason.
func stuck(container, reason, msg string) corev1.PodStatus {
	return corev1.PodStatus{
		Phase: corev1.PodPending,
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: container, Image: "image-of-" + container,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}},
		}},
	}
}

func crashing(container string, exit int32, lastWords string) corev1.PodStatus {
	st := stuck(container, "CrashLoopBackOff", "back-off 40s restarting failed container")
	st.ContainerStatuses[0].LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: exit, Reason: "Error", Message: lastWords}
	return st
}

func initFailed(exit int32, lastWords string) corev1.PodStatus {
	return corev1.PodStatus{
		Phase: corev1.PodPending,
		InitContainerStatuses: []corev1.ContainerStatus{{
			Name:  InitContainerName,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: exit, Reason: "Error", Message: lastWords}},
		}},
	}
}

// rolloutDeployment is Deployment api (2 replicas, generation 2) with
// ReplicaSets api-6f (revision 1, old) and api-7 (revision 2, new) and one
// pod per given status in each.
func rolloutDeployment(st appsv1.DeploymentStatus, newRSConds []appsv1.ReplicaSetCondition, oldPods, newPods []corev1.PodStatus) []runtime.Object {
	api := map[string]string{"app": "api"}
	objs := []runtime.Object{
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: testNS, UID: "dep-api", Generation: 2},
			Spec:       appsv1.DeploymentSpec{Replicas: ptr(int32(2)), Selector: &metav1.LabelSelector{MatchLabels: api}, Template: apiTemplate()},
			Status:     st,
		},
	}
	for _, rs := range []struct {
		name, rev string
		conds     []appsv1.ReplicaSetCondition
		pods      []corev1.PodStatus
	}{{"api-6f", "1", nil, oldPods}, {"api-7", "2", newRSConds, newPods}} {
		uid := types.UID("rs-" + rs.name)
		objs = append(objs, &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: rs.name, Namespace: testNS, UID: uid, Labels: api,
				Annotations:     map[string]string{"deployment.kubernetes.io/revision": rs.rev},
				OwnerReferences: ctrlRef(KindDeployment, "api", "dep-api")},
			Spec:   appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: api}},
			Status: appsv1.ReplicaSetStatus{Conditions: rs.conds},
		})
		for i, ps := range rs.pods {
			name := rs.name + "-" + string(rune('a'+i))
			objs = append(objs, fixturePod(name, testNS, api, ctrlRef(KindReplicaSet, rs.name, uid), apiTemplate().Spec, ps))
		}
	}
	return objs
}

// rolloutStatefulSet is StatefulSet db (2 replicas) with pods at the given
// revisions ("db-1" old, "db-2" the update revision).
func rolloutStatefulSet(strategy appsv1.StatefulSetUpdateStrategy, st appsv1.StatefulSetStatus, pods map[string]corev1.PodStatus) []runtime.Object {
	objs := []runtime.Object{&appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: testNS, UID: "sts-db", Generation: 3},
		Spec: appsv1.StatefulSetSpec{Replicas: ptr(int32(2)), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			UpdateStrategy: strategy},
		Status: st,
	}}
	i := 0
	for rev, ps := range pods {
		lbl := map[string]string{"app": "db", appsv1.StatefulSetRevisionLabel: rev}
		objs = append(objs, fixturePod("db-"+string(rune('0'+i)), testNS, lbl, ctrlRef(KindStatefulSet, "db", "sts-db"), corev1.PodSpec{}, ps))
		i++
	}
	return objs
}

func stsDone(current string) appsv1.StatefulSetStatus {
	return appsv1.StatefulSetStatus{ObservedGeneration: 3, Replicas: 2, ReadyReplicas: 2, UpdatedReplicas: 2,
		CurrentRevision: current, UpdateRevision: "db-2"}
}

// rolloutReplicaSet is bare ReplicaSet legacy (2 replicas) with a patched
// template and pods from the patched (true) or original (false) template.
func rolloutReplicaSet(conds []appsv1.ReplicaSetCondition, ready int32, pods map[bool][]corev1.PodStatus) []runtime.Object {
	lbl := map[string]string{"app": "legacy"}
	orig := corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "shop/legacy:1"}}}
	patched := *orig.DeepCopy()
	patched.InitContainers = []corev1.Container{{Name: InitContainerName}}
	patched.Containers = append(patched.Containers, corev1.Container{Name: SidecarContainerName})
	objs := []runtime.Object{&appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "legacy", Namespace: testNS, UID: "rs-legacy", Generation: 2},
		Spec: appsv1.ReplicaSetSpec{Replicas: ptr(int32(2)), Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbl}, Spec: patched}},
		Status: appsv1.ReplicaSetStatus{ObservedGeneration: 2, Replicas: 2, ReadyReplicas: ready, Conditions: conds},
	}}
	for _, isNew := range []bool{false, true} {
		spec, prefix := orig, "legacy-old-"
		if isNew {
			spec, prefix = patched, "legacy-new-"
		}
		for i, ps := range pods[isNew] {
			objs = append(objs, fixturePod(prefix+string(rune('a'+i)), testNS, lbl, ctrlRef(KindReplicaSet, "legacy", "rs-legacy"), spec, ps))
		}
	}
	return objs
}

func TestWaitRollout(t *testing.T) {
	depDone := appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 2, AvailableReplicas: 2}
	depHalf := appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 1, AvailableReplicas: 1}
	ready := readyPodStatus()
	rolling := appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType}
	tests := []struct {
		name    string
		ref     WorkloadRef
		objs    []runtime.Object
		timeout bool     // the rollout does not finish: ctx ends it
		wantErr []string // substrings; none = success
	}{
		{name: "deployment done, an old pod crashing", ref: apiRef,
			objs: rolloutDeployment(depDone, nil, []corev1.PodStatus{crashing("api", 1, "")}, []corev1.PodStatus{ready, ready})},
		{name: "deployment image pull", ref: apiRef,
			objs: rolloutDeployment(depHalf, nil, nil, []corev1.PodStatus{ready, stuck(SidecarContainerName, "ImagePullBackOff", `Back-off pulling image "bridgetun.local/bridgetun-agent:dev"`)}),
			wantErr: []string{`deployment/api in namespace shop: pod api-7-b: container "bridgetun-sidecar" (image image-of-bridgetun-sidecar): ImagePullBackOff: Back-off pulling image`,
				"see `kubectl -n shop describe pod api-7-b`"}},
		{name: "deployment missing secret", ref: apiRef,
			objs:    rolloutDeployment(depHalf, nil, nil, []corev1.PodStatus{stuck(SidecarContainerName, "CreateContainerConfigError", `secret "bridgetun-sidecar" not found`)}),
			wantErr: []string{`container "bridgetun-sidecar"`, `CreateContainerConfigError: secret "bridgetun-sidecar" not found`}},
		{name: "deployment init failure", ref: apiRef,
			objs: rolloutDeployment(depHalf, nil, nil, []corev1.PodStatus{initFailed(1, "iptables-restore v1.8.10 (nf_tables):\nCould not fetch rule set generation id: Permission denied (you must be root)\n")}),
			wantErr: []string{`pod api-7-a: init container "bridgetun-init" failed: exit code 1 (Error): iptables-restore v1.8.10 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)`,
				"see `kubectl -n shop logs api-7-a -c bridgetun-init`"}},
		{name: "deployment crash loop", ref: apiRef,
			objs: rolloutDeployment(depHalf, nil, nil, []corev1.PodStatus{crashing("api", 2, "listen tcp :8080: address already in use")}),
			wantErr: []string{`container "api" (image image-of-api) keeps crashing: exit code 2 (Error): listen tcp :8080: address already in use`,
				"kubectl -n shop logs api-7-a -c api --previous"}},
		{name: "deployment pods refused", ref: apiRef,
			objs: rolloutDeployment(depHalf, []appsv1.ReplicaSetCondition{{Type: appsv1.ReplicaSetReplicaFailure, Status: corev1.ConditionTrue,
				Reason: "FailedCreate", Message: `pods "api-7-x" is forbidden: violates PodSecurity "baseline:latest": non-default capabilities`}}, nil, nil),
			wantErr: []string{`deployment/api in namespace shop cannot create pods: FailedCreate: pods "api-7-x" is forbidden: violates PodSecurity`}},
		{name: "deployment progress deadline", ref: apiRef,
			objs: rolloutDeployment(appsv1.DeploymentStatus{ObservedGeneration: 2, Conditions: []appsv1.DeploymentCondition{{
				Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded",
				Message: `ReplicaSet "api-7" has timed out progressing.`}}}, nil, nil, nil),
			wantErr: []string{`deployment/api in namespace shop exceeded its progress deadline: ReplicaSet "api-7" has timed out progressing.`}},
		{name: "deployment not observed", ref: apiRef, timeout: true,
			objs:    rolloutDeployment(appsv1.DeploymentStatus{ObservedGeneration: 1}, nil, nil, nil),
			wantErr: []string{"deployment/api in namespace shop: rollout not finished: waiting for the deployment controller to see the new template"}},
		{name: "deployment not ready", ref: apiRef, timeout: true,
			objs:    rolloutDeployment(depHalf, nil, nil, []corev1.PodStatus{ready, stuck("api", "ContainerCreating", "")}),
			wantErr: []string{"1 of 2 replicas ready; pod api-7-b: container api: ContainerCreating", "see `kubectl -n shop describe deployment/api`"}},
		{name: "deployment sidecar secret cache not synced", ref: apiRef, timeout: true,
			objs:    rolloutDeployment(depHalf, nil, nil, []corev1.PodStatus{ready, stuck(SidecarContainerName, "CreateContainerConfigError", "failed to sync secret cache: timed out waiting for the condition")}),
			wantErr: []string{"1 of 2 replicas ready", "CreateContainerConfigError failed to sync secret cache"}},
		{name: "deployment old replicas left", ref: apiRef, timeout: true,
			objs:    rolloutDeployment(appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 3, UpdatedReplicas: 2, ReadyReplicas: 3, AvailableReplicas: 3}, nil, nil, nil),
			wantErr: []string{"1 old replicas pending termination"}},

		{name: "statefulset done, an old pod crashing", ref: dbRef,
			objs: rolloutStatefulSet(rolling, stsDone("db-2"), map[string]corev1.PodStatus{"db-2": ready, "db-1": crashing("pg", 1, "")})},
		{name: "statefulset revision not current", ref: dbRef, timeout: true,
			objs:    rolloutStatefulSet(rolling, stsDone("db-1"), map[string]corev1.PodStatus{"db-2": ready}),
			wantErr: []string{"waiting for revision db-2 to become current"}},
		{name: "statefulset OnDelete done", ref: dbRef,
			objs: rolloutStatefulSet(appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}, stsDone("db-1"), nil)},
		{name: "statefulset partition", ref: dbRef,
			objs: rolloutStatefulSet(appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateStatefulSetStrategy{Partition: ptr(int32(1))}},
				appsv1.StatefulSetStatus{ObservedGeneration: 3, Replicas: 2, ReadyReplicas: 2, UpdatedReplicas: 1, CurrentRevision: "db-1", UpdateRevision: "db-2"}, nil)},
		{name: "statefulset image pull", ref: dbRef,
			objs: rolloutStatefulSet(rolling, appsv1.StatefulSetStatus{ObservedGeneration: 3, Replicas: 2, ReadyReplicas: 1, UpdatedReplicas: 1,
				CurrentRevision: "db-1", UpdateRevision: "db-2"}, map[string]corev1.PodStatus{"db-2": stuck(SidecarContainerName, "ErrImagePull", "not found")}),
			wantErr: []string{`statefulset/db in namespace shop: pod db-0: container "bridgetun-sidecar" (image image-of-bridgetun-sidecar): ErrImagePull: not found`}},

		{name: "replicaset done", ref: legacyRef,
			objs: rolloutReplicaSet(nil, 2, map[bool][]corev1.PodStatus{true: {ready, ready}})},
		{name: "replicaset old pods left", ref: legacyRef, timeout: true,
			objs:    rolloutReplicaSet(nil, 2, map[bool][]corev1.PodStatus{true: {ready, ready}, false: {ready}}),
			wantErr: []string{"1 pods of the old template left"}},
		{name: "replicaset not ready", ref: legacyRef, timeout: true,
			objs:    rolloutReplicaSet(nil, 1, map[bool][]corev1.PodStatus{true: {ready}}),
			wantErr: []string{"1 of 2 replicas ready"}},
		{name: "replicaset crash loop", ref: legacyRef,
			objs:    rolloutReplicaSet(nil, 1, map[bool][]corev1.PodStatus{true: {ready, crashing(SidecarContainerName, 1, "no route to gateway")}}),
			wantErr: []string{`replicaset/legacy in namespace shop: pod legacy-new-b: container "bridgetun-sidecar"`, "keeps crashing: exit code 1 (Error): no route to gateway"}},
		{name: "replicaset pods refused", ref: legacyRef,
			objs: rolloutReplicaSet([]appsv1.ReplicaSetCondition{{Type: appsv1.ReplicaSetReplicaFailure, Status: corev1.ConditionTrue,
				Reason: "FailedCreate", Message: "exceeded quota"}}, 0, nil),
			wantErr: []string{"replicaset/legacy in namespace shop cannot create pods: FailedCreate: exceeded quota"}},

		{name: "missing", ref: WorkloadRef{Namespace: testNS, Kind: KindDeployment, Name: "gone"},
			wantErr: []string{"deployment/gone in namespace shop not found"}},
		{name: "unsupported kind", ref: WorkloadRef{Namespace: testNS, Kind: "DaemonSet", Name: "agent"},
			wantErr: []string{"daemonset/agent in namespace shop: bridgetun can intercept Deployments, StatefulSets and ReplicaSets"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset(tt.objs...)
			// A fail-fast error must come long before this; a rollout
			// that does not finish is cut short.
			timeout := 10 * time.Second
			if tt.timeout {
				timeout = 300 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(t.Context(), timeout)
			defer cancel()
			err := WaitRollout(ctx, client, tt.ref)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
				return
			}
			if err == nil {
				t.Fatal("got success, want an error")
			}
			if got := errors.Is(err, context.DeadlineExceeded); got != tt.timeout {
				t.Errorf("got error %q (deadline exceeded: %v), want deadline exceeded: %v", err, got, tt.timeout)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got error %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

// WaitRollout keeps looking until the status says done.
func TestWaitRolloutBecomesDone(t *testing.T) {
	half := appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 1, AvailableReplicas: 1}
	client := fake.NewClientset(rolloutDeployment(half, nil, nil, []corev1.PodStatus{readyPodStatus(), stuck("api", "ContainerCreating", "")})...)
	// Told during WaitRollout's first look at the Deployment; the fake
	// holds its lock until that look has its (unfinished) answer.
	looked := make(chan struct{}, 1)
	client.PrependReactor("get", "deployments", func(k8stesting.Action) (bool, runtime.Object, error) {
		select {
		case looked <- struct{}{}:
		default:
		}
		return false, nil, nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- WaitRollout(ctx, client, apiRef) }()

	select {
	case <-looked:
	case err := <-done:
		t.Fatalf("WaitRollout returned %v before the rollout finished", err)
	}
	finishRollout(t, ctx, client)
	if err := <-done; err != nil {
		t.Errorf("got %v, want success once the status says done", err)
	}
}

// No permission will not come by itself: say so at once.
func TestWaitRolloutForbidden(t *testing.T) {
	depHalf := appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 1, AvailableReplicas: 1}
	client := fake.NewClientset(rolloutDeployment(depHalf, nil, nil, nil)...)
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(corev1.Resource("pods"), "", errors.New("no list"))
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err := WaitRollout(ctx, client, apiRef)
	if !apierrors.IsForbidden(err) || !strings.HasPrefix(err.Error(), "wait for deployment/api in namespace shop: list pods") {
		t.Errorf("got %v, want a Forbidden error naming the workload", err)
	}
}

// WaitRolloutReport tells each new state once, from the waiting goroutine,
// and nothing after the rollout is done.
func TestWaitRolloutReport(t *testing.T) {
	half := appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 1, AvailableReplicas: 1}
	client := fake.NewClientset(rolloutDeployment(half, nil, nil, []corev1.PodStatus{readyPodStatus(), stuck("api", "ContainerCreating", "")})...)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var states []string
	seen := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- WaitRolloutReport(ctx, client, apiRef, func(s string) {
			states = append(states, s)
			select {
			case seen <- s:
			default:
			}
		})
	}()
	select {
	case <-seen:
	case err := <-done:
		t.Fatalf("WaitRolloutReport returned %v before the rollout finished", err)
	}
	finishRollout(t, ctx, client)
	if err := <-done; err != nil {
		t.Fatalf("got %v, want success once the status says done", err)
	}
	if len(states) != 1 || !strings.HasPrefix(states[0], "1 of 2 replicas ready; pod ") || !strings.Contains(states[0], "ContainerCreating") {
		t.Errorf("reported states: got %q, want one \"1 of 2 replicas ready; pod ...: ContainerCreating\"", states)
	}
}

// finishRollout marks the api Deployment's two replicas ready, as the
// controller would once the new pods run.
func finishRollout(t *testing.T, ctx context.Context, client *fake.Clientset) {
	t.Helper()
	d, err := client.AppsV1().Deployments(testNS).Get(ctx, "api", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Status.ReadyReplicas, d.Status.AvailableReplicas = 2, 2
	if _, err := client.AppsV1().Deployments(testNS).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
