package cluster

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
)

// The test world, namespace "shop" unless said otherwise:
//
//	Service api    (http:80 -> "http", admin:9000 -> 9000) -> Deployment api -> ReplicaSet api-6f -> pods
//	Service web    (80, no targetPort)                     -> Deployment web (3 replicas, container without ports)
//	Service db     (5432 -> 5432) in "data"                -> StatefulSet db (second container declares 5432)
//	Service legacy (80 -> 8000)                            -> bare ReplicaSet legacy
//	Service agent  -> DaemonSet agent; solo -> bare pod; external: no selector; ghost: no pods;
//	dns: UDP only; front: pods of web and legacy
const testNS = "shop"

func ctrlRef(kind, name string, uid types.UID) []metav1.OwnerReference {
	return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, UID: uid, Controller: ptr(true)}}
}

func apiTemplate() corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "api"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "migrate", Image: "shop/api:1"}},
			Containers: []corev1.Container{
				{
					Name: "api", Image: "shop/api:1",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "admin", ContainerPort: 9000}},
					LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/healthz", Port: intstr.FromString("http")}}},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{
						Port: intstr.FromInt32(8080)}}},
					StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/started", Port: intstr.FromInt32(9000)}}},
					Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}},
				},
				{
					Name: "logger", Image: "shop/logger:1",
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/ready", Port: intstr.FromInt32(8080)}}},
				},
			},
		},
	}
}

func fixturePod(name, ns string, lbl map[string]string, owners []metav1.OwnerReference, spec corev1.PodSpec, st corev1.PodStatus) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: lbl, OwnerReferences: owners},
		Spec:       spec, Status: st,
	}
}

func runningPodStatus() corev1.PodStatus { return corev1.PodStatus{Phase: corev1.PodRunning} }

func fixtureService(name, ns string, sel map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.ServiceSpec{Selector: sel, Ports: ports},
	}
}

func interceptWorld(t *testing.T) *fake.Clientset {
	t.Helper()
	api := map[string]string{"app": "api"}
	web := map[string]string{"app": "web", "tier": "front"}
	legacy := map[string]string{"app": "legacy", "tier": "front"}
	db := map[string]string{"app": "db"}
	agent := map[string]string{"app": "agent"}

	webTmpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: web, Annotations: map[string]string{"prometheus.io/scrape": "false"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "nginx", Image: "nginx:1"}}},
	}
	legacyTmpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: legacy},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "shop/legacy:1",
			Ports: []corev1.ContainerPort{{ContainerPort: 8000}}}}},
	}
	dbTmpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: db},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "exporter", Image: "exporter:1", Ports: []corev1.ContainerPort{{ContainerPort: 9187}}},
			{Name: "postgres", Image: "postgres:17", Ports: []corev1.ContainerPort{{Name: "pg", ContainerPort: 5432}}},
		}},
	}
	objs := []runtime.Object{
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: testNS, UID: "dep-api", Labels: map[string]string{"team": "shop"}},
			Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(2)), Selector: &metav1.LabelSelector{MatchLabels: api},
				Template: apiTemplate()},
		},
		&appsv1.ReplicaSet{
			// As if the controller had copied the Deployment's label: it
			// must not be listed as patched on its own.
			ObjectMeta: metav1.ObjectMeta{Name: "api-6f", Namespace: testNS, UID: "rs-api-6f",
				Labels:          map[string]string{"app": "api", LabelPatched: "true"},
				Annotations:     map[string]string{"deployment.kubernetes.io/revision": "1"},
				OwnerReferences: ctrlRef(KindDeployment, "api", "dep-api")},
			Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: api}, Template: apiTemplate()},
		},
		fixturePod("api-6f-a", testNS, api, ctrlRef(KindReplicaSet, "api-6f", "rs-api-6f"), apiTemplate().Spec, runningPodStatus()),
		fixturePod("api-6f-b", testNS, api, ctrlRef(KindReplicaSet, "api-6f", "rs-api-6f"), apiTemplate().Spec, corev1.PodStatus{Phase: corev1.PodPending}),
		fixtureService("api", testNS, api,
			corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
			corev1.ServicePort{Name: "admin", Port: 9000, TargetPort: intstr.FromInt32(9000)}),

		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: testNS, UID: "dep-web"},
			Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(3)), Selector: &metav1.LabelSelector{MatchLabels: web},
				Template: webTmpl},
		},
		&appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: testNS, UID: "rs-web-1", OwnerReferences: ctrlRef(KindDeployment, "web", "dep-web")},
			Spec:       appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: web}, Template: webTmpl},
		},
		fixturePod("web-1-a", testNS, web, ctrlRef(KindReplicaSet, "web-1", "rs-web-1"), webTmpl.Spec, runningPodStatus()),
		fixtureService("web", testNS, map[string]string{"app": "web"}, corev1.ServicePort{Port: 80}),

		&appsv1.StatefulSet{
			ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "data", UID: "sts-db"},
			Spec: appsv1.StatefulSetSpec{Selector: &metav1.LabelSelector{MatchLabels: db}, Template: dbTmpl,
				UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType}},
		},
		fixturePod("db-0", "data", db, ctrlRef(KindStatefulSet, "db", "sts-db"), dbTmpl.Spec, runningPodStatus()),
		fixtureService("db", "data", db, corev1.ServicePort{Name: "pg", Port: 5432, TargetPort: intstr.FromInt32(5432)}),

		&appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: "legacy", Namespace: testNS, UID: "rs-legacy"},
			Spec: appsv1.ReplicaSetSpec{Replicas: ptr(int32(2)), Selector: &metav1.LabelSelector{MatchLabels: legacy},
				Template: legacyTmpl},
		},
		fixturePod("legacy-a", testNS, legacy, ctrlRef(KindReplicaSet, "legacy", "rs-legacy"), legacyTmpl.Spec, runningPodStatus()),
		fixturePod("legacy-b", testNS, legacy, ctrlRef(KindReplicaSet, "legacy", "rs-legacy"), legacyTmpl.Spec, runningPodStatus()),
		fixtureService("legacy", testNS, map[string]string{"app": "legacy"}, corev1.ServicePort{Port: 80, TargetPort: intstr.FromInt32(8000)}),

		fixturePod("agent-x", testNS, agent, ctrlRef("DaemonSet", "agent", "ds-agent"), corev1.PodSpec{}, runningPodStatus()),
		fixtureService("agent", testNS, agent, corev1.ServicePort{Port: 80}),
		fixturePod("solo", testNS, map[string]string{"app": "solo"}, nil, corev1.PodSpec{}, runningPodStatus()),
		fixtureService("solo", testNS, map[string]string{"app": "solo"}, corev1.ServicePort{Port: 80}),
		fixtureService("external", testNS, nil, corev1.ServicePort{Port: 443}),
		fixtureService("ghost", testNS, map[string]string{"app": "ghost"}, corev1.ServicePort{Port: 80}),
		fixtureService("dns", testNS, api, corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP}),
		fixtureService("front", testNS, map[string]string{"tier": "front"}, corev1.ServicePort{Port: 80}),
	}
	cs := fake.NewClientset(objs...)
	acceptDryRuns(cs)
	return cs
}

func TestResolveInterceptTarget(t *testing.T) {
	httpPort := corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}
	adminPort := corev1.ServicePort{Name: "admin", Port: 9000, TargetPort: intstr.FromInt32(9000)}
	api := func(p corev1.ServicePort, container string, port int32) InterceptTarget {
		return InterceptTarget{Namespace: testNS, Service: "api", ServicePort: p, Kind: KindDeployment, Name: "api",
			Container: container, ContainerPort: port, Replicas: 2}
	}
	tests := []struct {
		name, ns, svc, port string
		want                InterceptTarget
		wantErr             string // exact error
	}{
		{name: "by name, named targetPort", svc: "api", port: "http", want: api(httpPort, "api", 8080)},
		{name: "by number", svc: "api", port: "80", want: api(httpPort, "api", 8080)},
		{name: "numbered targetPort", svc: "api", port: "9000", want: api(adminPort, "api", 9000)},
		{name: "only port, no targetPort, no declared port", svc: "web", want: InterceptTarget{Namespace: testNS, Service: "web",
			ServicePort: corev1.ServicePort{Port: 80}, Kind: KindDeployment, Name: "web", Container: "nginx", ContainerPort: 80, Replicas: 3}},
		{name: "statefulset, second container", ns: "data", svc: "db", port: "pg", want: InterceptTarget{Namespace: "data", Service: "db",
			Kind: KindStatefulSet, Name: "db", Container: "postgres", ContainerPort: 5432, Replicas: 1,
			ServicePort: corev1.ServicePort{Name: "pg", Port: 5432, TargetPort: intstr.FromInt32(5432)}}},
		{name: "bare replicaset", svc: "legacy", want: InterceptTarget{Namespace: testNS, Service: "legacy",
			Kind: KindReplicaSet, Name: "legacy", Container: "app", ContainerPort: 8000, Replicas: 2,
			ServicePort: corev1.ServicePort{Port: 80, TargetPort: intstr.FromInt32(8000)}}},

		{name: "several ports", svc: "api",
			wantErr: "service shop/api has several ports (http:80, admin:9000): choose one with --port LOCAL:REMOTE"},
		{name: "unknown port", svc: "api", port: "grpc",
			wantErr: `service shop/api has no port "grpc": its ports are http:80, admin:9000`},
		{name: "missing service", svc: "nope",
			wantErr: "service shop/nope not found: check `kubectl -n shop get services`"},
		{name: "no selector", svc: "external",
			wantErr: "service shop/external has no selector: no workload serves it, so there is nothing to intercept"},
		{name: "no pods", svc: "ghost",
			wantErr: "service shop/ghost has no pods (selector app=ghost): nothing to intercept; check `kubectl -n shop get pods -l app=ghost`"},
		{name: "daemonset", svc: "agent",
			wantErr: "service shop/agent is served by DaemonSet/agent: bridgetun can intercept Deployments, StatefulSets and ReplicaSets"},
		{name: "bare pod", svc: "solo",
			wantErr: "service shop/solo is served by Pod/solo: bridgetun can intercept Deployments, StatefulSets and ReplicaSets"},
		{name: "udp", svc: "dns",
			wantErr: "port 53 of service shop/dns is UDP: bridgetun intercepts TCP only"},
		{name: "several workloads", svc: "front",
			wantErr: "service shop/front selects pods of several workloads (ReplicaSet/legacy, Deployment/web): intercepting one would catch only part of its traffic"},
	}
	client := interceptWorld(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := tt.ns
			if ns == "" {
				ns = testNS
			}
			got, err := ResolveInterceptTarget(t.Context(), client, ns, tt.svc, tt.port)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("got error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("target (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResolveNamedTargetPortMissing(t *testing.T) {
	client := interceptWorld(t)
	svc, _ := client.CoreV1().Services(testNS).Get(t.Context(), "api", metav1.GetOptions{})
	svc.Spec.Ports[0].TargetPort = intstr.FromString("web")
	if _, err := client.CoreV1().Services(testNS).Update(t.Context(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := ResolveInterceptTarget(t.Context(), client, testNS, "api", "http")
	want := `service shop/api port http:80: deployment/api in namespace shop declares no container port named "web" (the Service's targetPort)`
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
}

var testSidecar = SidecarSpec{
	Image: "bridgetun.local/bridgetun-agent:dev",
	Relay: "bridgetun-gateway.bt.svc:8083",
}

func apiTarget() InterceptTarget {
	return InterceptTarget{Namespace: testNS, Service: "api", ServicePort: corev1.ServicePort{Name: "http", Port: 80},
		Kind: KindDeployment, Name: "api", Container: "api", ContainerPort: 8080, Replicas: 2}
}

func getDeployment(t *testing.T, client kubernetes.Interface, name string) *appsv1.Deployment {
	t.Helper()
	d, err := client.AppsV1().Deployments(testNS).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestPatchWorkload(t *testing.T) {
	client := interceptWorld(t)
	before := time.Now().Add(-time.Second)
	changed, err := PatchWorkload(t.Context(), client, apiTarget(), testSidecar)
	if err != nil || !changed {
		t.Fatalf("got changed=%v, %v; want true, nil", changed, err)
	}
	d := getDeployment(t, client, "api")
	ps := d.Spec.Template.Spec

	small := corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")}}
	runtimeDefault := &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	wantInit := corev1.Container{
		Name: "bridgetun-init", Image: testSidecar.Image, ImagePullPolicy: corev1.PullIfNotPresent,
		Args:      []string{"init", "--container-port", "8080", "--sidecar-port", "15001", "--sidecar-uid", "65532"},
		Resources: small, TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser: ptr(int64(0)), RunAsNonRoot: ptr(false), AllowPrivilegeEscalation: ptr(false),
			Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN"}},
			SeccompProfile: runtimeDefault,
		},
	}
	wantSidecar := corev1.Container{
		Name: "bridgetun-sidecar", Image: testSidecar.Image, ImagePullPolicy: corev1.PullIfNotPresent,
		Args: []string{"sidecar", "--listen", ":15001", "--probe-listen", ":15002", "--original", "127.0.0.1:8080",
			"--gateway", "bridgetun-gateway.bt.svc:8083", "--namespace", "shop", "--service", "api", "--metrics-addr", ":15090",
			"--token-file", "/var/run/secrets/bridgetun.io/relay/token"},
		VolumeMounts: []corev1.VolumeMount{{Name: "bridgetun-relay-token", MountPath: "/var/run/secrets/bridgetun.io/relay", ReadOnly: true}},
		Ports: []corev1.ContainerPort{
			{Name: "bt-intercept", ContainerPort: 15001, Protocol: corev1.ProtocolTCP},
			{Name: "bt-metrics", ContainerPort: 15090, Protocol: corev1.ProtocolTCP},
		},
		Resources: small, TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser: ptr(int64(65532)), RunAsGroup: ptr(int64(65532)), RunAsNonRoot: ptr(true),
			ReadOnlyRootFilesystem: ptr(true), AllowPrivilegeEscalation: ptr(false),
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}, SeccompProfile: runtimeDefault,
		},
	}

	// Everything else is the original template with three probes moved.
	want := apiTemplate()
	want.Annotations = map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "15090"}
	want.Spec.InitContainers = []corev1.Container{wantInit, want.Spec.InitContainers[0]}
	want.Spec.Containers = append(want.Spec.Containers, wantSidecar)
	// The sidecar's relay credential: the pod's own token for the relay's
	// audience, short-lived (the kubelet rotates it).
	want.Spec.Volumes = append(want.Spec.Volumes, corev1.Volume{Name: "bridgetun-relay-token", VolumeSource: corev1.VolumeSource{
		Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience: "bridgetun-relay", ExpirationSeconds: ptr(int64(600)), Path: "token"}}}, DefaultMode: ptr(int32(0o444))}}})
	api := &want.Spec.Containers[0]
	api.LivenessProbe.HTTPGet.Port = intstr.FromInt32(15002)    // "http" is 8080
	api.ReadinessProbe.TCPSocket.Port = intstr.FromInt32(15002) // 8080
	// api's startup probe (9000) and logger's probe (another container) stay.
	if diff := cmp.Diff(want, d.Spec.Template); diff != "" {
		t.Errorf("patched template (-want +got):\n%s", diff)
	}
	if n := len(ps.Containers); n != 3 {
		t.Errorf("got %d containers, want 3", n)
	}

	var saved corev1.PodTemplateSpec
	if err := json.Unmarshal([]byte(d.Annotations[AnnotationOriginalTemplate]), &saved); err != nil {
		t.Fatalf("saved template: %v", err)
	}
	if diff := cmp.Diff(apiTemplate(), saved); diff != "" {
		t.Errorf("saved template (-want +got):\n%s", diff)
	}
	if got := d.Annotations[AnnotationInterceptPort]; got != "8080" {
		t.Errorf("got intercept port annotation %q, want 8080", got)
	}
	at, err := time.Parse(time.RFC3339, d.Annotations[AnnotationPatchedAt])
	if err != nil || at.Before(before) || at.After(time.Now()) {
		t.Errorf("got patched-at %q (%v), want now in RFC 3339", d.Annotations[AnnotationPatchedAt], err)
	}
	if diff := cmp.Diff(map[string]string{"team": "shop", LabelPatched: "true"}, d.Labels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}

	// Again, for the same port: nothing changes.
	changed, err = PatchWorkload(t.Context(), client, apiTarget(), testSidecar)
	if err != nil || changed {
		t.Fatalf("second patch: got changed=%v, %v; want false, nil", changed, err)
	}
	again := getDeployment(t, client, "api")
	if diff := cmp.Diff(d.Spec.Template, again.Spec.Template); diff != "" {
		t.Errorf("template after the second patch (-first +second):\n%s", diff)
	}

	// Another port of the same workload: refused, naming the first.
	other := apiTarget()
	other.ContainerPort = 9000
	_, err = PatchWorkload(t.Context(), client, other, testSidecar)
	wantErr := "deployment/api in namespace shop is already intercepted on container port 8080: end that intercept before intercepting port 9000"
	if err == nil || err.Error() != wantErr {
		t.Errorf("patch for another port: got %v, want %q", err, wantErr)
	}
}

// TestPatchWorkloadUpgradesOldSidecar: a workload patched by an older
// bridgetun, whose sidecar read a namespace-wide token from the gateway
// Secret (which the gateway no longer takes), is not "already patched": a
// re-attach sees it needs patching, and the patch starts again from the
// saved original, so the new template has the projected token and the
// original is still the one saved.
func TestPatchWorkloadUpgradesOldSidecar(t *testing.T) {
	client := interceptWorld(t)
	if _, err := PatchWorkload(t.Context(), client, apiTarget(), testSidecar); err != nil {
		t.Fatal(err)
	}
	want := getDeployment(t, client, "api")
	// Make it look like the old patch: the sidecar's token from a Secret.
	old := want.DeepCopy()
	ps := &old.Spec.Template.Spec
	ps.Volumes = slices.DeleteFunc(ps.Volumes, func(v corev1.Volume) bool { return v.Name == RelayTokenVolume })
	sc := &ps.Containers[len(ps.Containers)-1]
	sc.VolumeMounts = nil
	sc.Env = []corev1.EnvVar{{Name: "BRIDGETUN_SIDECAR_TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: GatewayName}, Key: "sidecar-token"}}}}
	if _, err := client.AppsV1().Deployments(testNS).Update(t.Context(), old, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if ok, err := WorkloadPatchedFor(t.Context(), client, apiTarget().Ref(), 8080); ok || err != nil {
		t.Errorf("WorkloadPatchedFor an old sidecar: got %v, %v; want false (it must be patched again)", ok, err)
	}
	changed, err := PatchWorkload(t.Context(), client, apiTarget(), testSidecar)
	if err != nil || !changed {
		t.Fatalf("patch over the old sidecar: got changed=%v, %v; want true, nil", changed, err)
	}
	got := getDeployment(t, client, "api")
	if diff := cmp.Diff(want.Spec.Template, got.Spec.Template); diff != "" {
		t.Errorf("template patched over the old sidecar (-fresh patch +got):\n%s", diff)
	}
	if got.Annotations[AnnotationOriginalTemplate] != want.Annotations[AnnotationOriginalTemplate] {
		t.Errorf("saved original changed by the re-patch")
	}
	if ok, err := WorkloadPatchedFor(t.Context(), client, apiTarget().Ref(), 8080); !ok || err != nil {
		t.Errorf("WorkloadPatchedFor after the re-patch: got %v, %v; want true", ok, err)
	}
}

func TestPatchWorkloadKeepsPrometheusAnnotations(t *testing.T) {
	client := interceptWorld(t)
	target := InterceptTarget{Namespace: testNS, Service: "web", Kind: KindDeployment, Name: "web", Container: "nginx", ContainerPort: 80}
	if _, err := PatchWorkload(t.Context(), client, target, testSidecar); err != nil {
		t.Fatal(err)
	}
	got := getDeployment(t, client, "web").Spec.Template.Annotations
	if diff := cmp.Diff(map[string]string{"prometheus.io/scrape": "false"}, got); diff != "" {
		t.Errorf("template annotations (-want +got):\n%s", diff)
	}
}

func TestPatchWorkloadRefuses(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*appsv1.Deployment)
		spec    func(*SidecarSpec)
		target  func(*InterceptTarget)
		wantErr string
	}{
		{name: "hostNetwork", edit: func(d *appsv1.Deployment) { d.Spec.Template.Spec.HostNetwork = true },
			wantErr: "deployment/api in namespace shop uses hostNetwork: its redirect rules would apply to the node, so bridgetun will not intercept it"},
		{name: "port taken", edit: func(d *appsv1.Deployment) {
			d.Spec.Template.Spec.Containers[1].Ports = []corev1.ContainerPort{{ContainerPort: 15090}}
		}, wantErr: `patch deployment/api in namespace shop: container "logger" uses port 15090, which the sidecar needs: choose other sidecar ports`},
		{name: "volume name taken", edit: func(d *appsv1.Deployment) {
			d.Spec.Template.Spec.Volumes = append(d.Spec.Template.Spec.Volumes, corev1.Volume{Name: RelayTokenVolume})
		}, wantErr: `patch deployment/api in namespace shop: the pod template already has a volume named "bridgetun-relay-token", which the sidecar needs`},
		{name: "sidecar without annotations", edit: func(d *appsv1.Deployment) {
			d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, corev1.Container{Name: SidecarContainerName})
		}, wantErr: "deployment/api in namespace shop has bridgetun's containers but no bridgetun.io/intercept-port annotation: re-apply"},
		{name: "no such container", target: func(t *InterceptTarget) { t.Container = "gone" },
			wantErr: `patch deployment/api in namespace shop: no container "gone" in the pod template`},
		{name: "sidecar port equals container port", spec: func(s *SidecarSpec) { s.SidecarPort = 8080 },
			wantErr: "patch deployment/api in namespace shop: container port and sidecar port are both 8080: they must differ"},
		{name: "no image", spec: func(s *SidecarSpec) { s.Image = "" },
			wantErr: "patch deployment/api in namespace shop: sidecar spec has no image"},
		{name: "daemonset", target: func(t *InterceptTarget) { t.Kind = "DaemonSet" },
			wantErr: "daemonset/api in namespace shop: bridgetun can intercept Deployments, StatefulSets and ReplicaSets"},
		{name: "missing", target: func(t *InterceptTarget) { t.Name = "gone" },
			wantErr: `get deployment/gone in namespace shop: deployments.apps "gone" not found`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := interceptWorld(t)
			if tt.edit != nil {
				d := getDeployment(t, client, "api")
				tt.edit(d)
				if _, err := client.AppsV1().Deployments(testNS).Update(t.Context(), d, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			spec, target := testSidecar, apiTarget()
			if tt.spec != nil {
				tt.spec(&spec)
			}
			if tt.target != nil {
				tt.target(&target)
			}
			changed, err := PatchWorkload(t.Context(), client, target, spec)
			if changed || err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("got changed=%v, %v; want false and an error starting %q", changed, err, tt.wantErr)
			}
		})
	}
}

func TestRestoreWorkload(t *testing.T) {
	client := interceptWorld(t)
	orig := getDeployment(t, client, "api")
	origJSON, _ := json.Marshal(orig.Spec.Template)
	if _, err := PatchWorkload(t.Context(), client, apiTarget(), testSidecar); err != nil {
		t.Fatal(err)
	}
	ref := WorkloadRef{Namespace: testNS, Kind: KindDeployment, Name: "api"}
	restored, err := RestoreWorkload(t.Context(), client, ref)
	if err != nil || !restored {
		t.Fatalf("got restored=%v, %v; want true, nil", restored, err)
	}
	got := getDeployment(t, client, "api")
	if diff := cmp.Diff(orig.Spec.Template, got.Spec.Template); diff != "" {
		t.Errorf("restored template (-original +restored):\n%s", diff)
	}
	if gotJSON, _ := json.Marshal(got.Spec.Template); string(gotJSON) != string(origJSON) {
		t.Errorf("restored template JSON\n%s\nwant\n%s", gotJSON, origJSON)
	}
	if diff := cmp.Diff(orig.Labels, got.Labels); diff != "" {
		t.Errorf("labels (-original +restored):\n%s", diff)
	}
	if diff := cmp.Diff(orig.Annotations, got.Annotations); diff != "" {
		t.Errorf("annotations (-original +restored):\n%s", diff)
	}

	for _, r := range []WorkloadRef{ref, {Namespace: testNS, Kind: KindDeployment, Name: "gone"}} {
		restored, err = RestoreWorkload(t.Context(), client, r)
		if err != nil || restored {
			t.Errorf("restore %s again: got restored=%v, %v; want false, nil", r, restored, err)
		}
	}
}

func TestRestoreWorkloadDamaged(t *testing.T) {
	tests := []struct {
		name        string
		annotations map[string]string
		wantErr     string
	}{
		{name: "no saved template", annotations: map[string]string{AnnotationInterceptPort: "8080"},
			wantErr: "deployment/api in namespace shop has bridgetun's containers but no saved template (annotation bridgetun.io/original-template): " +
				"re-apply the workload's manifest, then `kubectl -n shop annotate deployment/api bridgetun.io/original-template- bridgetun.io/patched-at- bridgetun.io/intercept-port-` " +
				"and `kubectl -n shop label deployment/api bridgetun.io/patched-`"},
		{name: "garbled", annotations: map[string]string{AnnotationOriginalTemplate: "{not json"},
			wantErr: "deployment/api in namespace shop: annotation bridgetun.io/original-template is not a pod template ("},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := interceptWorld(t)
			if _, err := PatchWorkload(t.Context(), client, apiTarget(), testSidecar); err != nil {
				t.Fatal(err)
			}
			d := getDeployment(t, client, "api")
			d.Annotations = tt.annotations
			if _, err := client.AppsV1().Deployments(testNS).Update(t.Context(), d, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			restored, err := RestoreWorkload(t.Context(), client, WorkloadRef{Namespace: testNS, Kind: KindDeployment, Name: "api"})
			if restored || err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("got restored=%v, %v; want false and an error starting %q", restored, err, tt.wantErr)
			}
		})
	}
}

// A template replaced since the patch (by a deploy) is kept; only the
// markers go, and a later patch saves the new template.
func TestRestoreWorkloadAfterRedeploy(t *testing.T) {
	client := interceptWorld(t)
	if _, err := PatchWorkload(t.Context(), client, apiTarget(), testSidecar); err != nil {
		t.Fatal(err)
	}
	d := getDeployment(t, client, "api")
	d.Spec.Template = apiTemplate()
	d.Spec.Template.Spec.Containers[0].Image = "shop/api:2"
	if _, err := client.AppsV1().Deployments(testNS).Update(t.Context(), d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	changed, err := PatchWorkload(t.Context(), client, apiTarget(), testSidecar)
	if err != nil || !changed {
		t.Fatalf("patch after a redeploy: got changed=%v, %v; want true, nil", changed, err)
	}
	if _, err := RestoreWorkload(t.Context(), client, WorkloadRef{Namespace: testNS, Kind: KindDeployment, Name: "api"}); err != nil {
		t.Fatal(err)
	}
	if got := getDeployment(t, client, "api").Spec.Template.Spec.Containers[0].Image; got != "shop/api:2" {
		t.Errorf("got image %q after restore, want shop/api:2", got)
	}

	// Markers only (the template was replaced while patched).
	d = getDeployment(t, client, "api")
	d.Annotations = map[string]string{AnnotationOriginalTemplate: "{}", AnnotationInterceptPort: "8080"}
	d.Labels[LabelPatched] = "true"
	if _, err := client.AppsV1().Deployments(testNS).Update(t.Context(), d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	restored, err := RestoreWorkload(t.Context(), client, WorkloadRef{Namespace: testNS, Kind: KindDeployment, Name: "api"})
	if err != nil || !restored {
		t.Fatalf("got restored=%v, %v; want true, nil", restored, err)
	}
	got := getDeployment(t, client, "api")
	if got.Annotations != nil || got.Labels[LabelPatched] != "" || got.Spec.Template.Spec.Containers[0].Image != "shop/api:2" {
		t.Errorf("got annotations %v labels %v image %s; want no markers and the newer template",
			got.Annotations, got.Labels, got.Spec.Template.Spec.Containers[0].Image)
	}
}

func TestPatchedWorkloads(t *testing.T) {
	client := interceptWorld(t)
	targets := []InterceptTarget{
		apiTarget(),
		{Namespace: "data", Service: "db", Kind: KindStatefulSet, Name: "db", Container: "postgres", ContainerPort: 5432},
		{Namespace: testNS, Service: "legacy", Kind: KindReplicaSet, Name: "legacy", Container: "app", ContainerPort: 8000},
	}
	for _, tt := range targets {
		if _, err := PatchWorkload(t.Context(), client, tt, testSidecar); err != nil {
			t.Fatal(err)
		}
	}
	names := func(refs []WorkloadRef) []string {
		var out []string
		for _, r := range refs {
			if r.PatchedAt.IsZero() {
				t.Errorf("%s: no PatchedAt", r)
			}
			out = append(out, r.String())
		}
		return out
	}
	all, err := PatchedWorkloads(t.Context(), client, "")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"statefulset/db in namespace data", "deployment/api in namespace shop", "replicaset/legacy in namespace shop"}
	if diff := cmp.Diff(want, names(all)); diff != "" {
		t.Errorf("all namespaces (-want +got):\n%s", diff)
	}
	shop, err := PatchedWorkloads(t.Context(), client, testNS)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want[1:], names(shop)); diff != "" {
		t.Errorf("namespace shop (-want +got):\n%s", diff)
	}
	if _, err := RestoreWorkload(t.Context(), client, all[1]); err != nil {
		t.Fatal(err)
	}
	shop, _ = PatchedWorkloads(t.Context(), client, testNS)
	if diff := cmp.Diff(want[2:], names(shop)); diff != "" {
		t.Errorf("after restoring %s (-want +got):\n%s", all[1], diff)
	}
}

func podNames(t *testing.T, client kubernetes.Interface, ns string) []string {
	t.Helper()
	list, err := client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range list.Items {
		out = append(out, p.Name)
	}
	slices.Sort(out)
	return out
}

// A bare ReplicaSet does not replace its pods when its template changes:
// patch and restore delete them (and only them).
func TestPatchReplicaSetRollsPods(t *testing.T) {
	client := interceptWorld(t)
	ctx := t.Context()
	legacy := map[string]string{"app": "legacy", "tier": "front"}
	stray := fixturePod("legacy-stray", testNS, legacy, nil, corev1.PodSpec{}, runningPodStatus())
	if _, err := client.CoreV1().Pods(testNS).Create(ctx, stray, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	target := InterceptTarget{Namespace: testNS, Service: "legacy", Kind: KindReplicaSet, Name: "legacy", Container: "app", ContainerPort: 8000}
	if _, err := PatchWorkload(ctx, client, target, testSidecar); err != nil {
		t.Fatal(err)
	}
	gone := func(names ...string) {
		t.Helper()
		for _, n := range podNames(t, client, testNS) {
			if slices.Contains(names, n) {
				t.Errorf("pod %s is still there", n)
			}
		}
	}
	gone("legacy-a", "legacy-b")
	if !slices.Contains(podNames(t, client, testNS), "legacy-stray") {
		t.Error("a pod the ReplicaSet does not own was deleted")
	}

	// The controller recreates a pod from the patched template.
	rs, _ := client.AppsV1().ReplicaSets(testNS).Get(ctx, "legacy", metav1.GetOptions{})
	again := fixturePod("legacy-c", testNS, legacy, ctrlRef(KindReplicaSet, "legacy", "rs-legacy"), rs.Spec.Template.Spec, runningPodStatus())
	if _, err := client.CoreV1().Pods(testNS).Create(ctx, again, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if changed, err := PatchWorkload(ctx, client, target, testSidecar); err != nil || changed {
		t.Fatalf("second patch: got changed=%v, %v; want false, nil", changed, err)
	}
	if !slices.Contains(podNames(t, client, testNS), "legacy-c") {
		t.Error("second patch deleted a pod that already has the sidecar")
	}
	// A pod still running an older bridgetun's sidecar (no relay token)
	// is replaced too.
	old := again.DeepCopy()
	old.Name = "legacy-old"
	old.Spec.Volumes = slices.DeleteFunc(old.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == RelayTokenVolume })
	if _, err := client.CoreV1().Pods(testNS).Create(ctx, old, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := rollPods(ctx, client, replicaSetWorkload(client, rs), true); err != nil {
		t.Fatal(err)
	}
	gone("legacy-old")
	if !slices.Contains(podNames(t, client, testNS), "legacy-c") {
		t.Error("rolling deleted a pod with the current sidecar")
	}
	if _, err := RestoreWorkload(ctx, client, target.Ref()); err != nil {
		t.Fatal(err)
	}
	gone("legacy-c")
}

func TestPatchStatefulSetRollsPods(t *testing.T) {
	tests := []struct {
		strategy appsv1.StatefulSetUpdateStrategyType
		wantPods []string
	}{
		{appsv1.RollingUpdateStatefulSetStrategyType, []string{"db-0"}}, // the controller rolls it
		{appsv1.OnDeleteStatefulSetStrategyType, nil},
	}
	for _, tt := range tests {
		t.Run(string(tt.strategy), func(t *testing.T) {
			client := interceptWorld(t)
			s, _ := client.AppsV1().StatefulSets("data").Get(t.Context(), "db", metav1.GetOptions{})
			s.Spec.UpdateStrategy.Type = tt.strategy
			if _, err := client.AppsV1().StatefulSets("data").Update(t.Context(), s, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			target := InterceptTarget{Namespace: "data", Service: "db", Kind: KindStatefulSet, Name: "db", Container: "postgres", ContainerPort: 5432}
			if _, err := PatchWorkload(t.Context(), client, target, testSidecar); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantPods, podNames(t, client, "data")); diff != "" {
				t.Errorf("pods after patch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWorkloadRefString(t *testing.T) {
	for _, tt := range []struct {
		ref  WorkloadRef
		want string
	}{
		{WorkloadRef{Kind: KindDeployment, Name: "api"}, "deployment/api"},
		{WorkloadRef{Namespace: "shop", Kind: KindStatefulSet, Name: "db"}, "statefulset/db in namespace shop"},
	} {
		if got := tt.ref.String(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}
}
