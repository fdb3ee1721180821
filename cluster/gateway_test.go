package cluster

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
)

var testSpec = GatewaySpec{
	Namespace: "bt",
	Image:     "bridgetun.local/bridgetun-agent:dev",
	Version:   "v1.0.0",
}

func TestGatewayYAML(t *testing.T) {
	spec := testSpec
	spec.ExposeNodePort = true
	out, err := GatewayYAML(spec)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	var dep *appsv1.Deployment
	var svc, relay *corev1.Service
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		obj, gvk, err := Decoder().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("decode %q: %v", doc, err)
		}
		kinds = append(kinds, gvk.Kind)
		m, ok := obj.(metav1.Object)
		switch {
		case !ok:
			t.Errorf("%s: no object metadata", gvk.Kind)
		case gvk.Kind == "ClusterRole":
			if m.GetName() != GatewayName || m.GetNamespace() != "" {
				t.Errorf("ClusterRole %s/%s, want cluster-scoped %s", m.GetNamespace(), m.GetName(), GatewayName)
			}
		case gvk.Kind == "ClusterRoleBinding":
			if m.GetName() != GatewayName+"-bt" || m.GetNamespace() != "" {
				t.Errorf("ClusterRoleBinding %s/%s, want cluster-scoped %s-bt (one per gateway namespace)", m.GetNamespace(), m.GetName(), GatewayName)
			}
		case (m.GetName() != GatewayName && m.GetName() != RelayName) || m.GetNamespace() != "bt":
			t.Errorf("%s: not named %s in namespace bt", gvk.Kind, GatewayName)
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			dep = o
		case *corev1.Service:
			if o.Name == RelayName {
				relay = o
				continue
			}
			svc = o
		}
	}
	if diff := cmp.Diff([]string{"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "Service"}, kinds); diff != "" {
		t.Errorf("kinds (-want +got):\n%s", diff)
	}

	// No Secret: the gateway makes its key at start, so nobody with
	// `get secrets` in the namespace can read it.

	if dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || *dep.Spec.Replicas != 1 {
		t.Errorf("deployment strategy %q replicas %d, want Recreate 1", dep.Spec.Strategy.Type, *dep.Spec.Replicas)
	}
	pod := dep.Spec.Template
	wantAnn := map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "9090", AnnotationVersion: "v1.0.0"}
	if diff := cmp.Diff(wantAnn, pod.Annotations); diff != "" {
		t.Errorf("pod annotations (-want +got):\n%s", diff)
	}
	if pod.Labels[LabelName] != GatewayName {
		t.Errorf("pod labels %v lack %s=%s", pod.Labels, LabelName, GatewayName)
	}
	sysctls := pod.Spec.SecurityContext.Sysctls
	if len(sysctls) != 1 || sysctls[0] != (corev1.Sysctl{Name: "net.ipv4.ping_group_range", Value: "0 2147483647"}) {
		t.Errorf("pod sysctls = %v", sysctls)
	}
	c := pod.Spec.Containers[0]
	if c.Name != "gateway" || c.Image != spec.Image || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("container %q image %q pull %q", c.Name, c.Image, c.ImagePullPolicy)
	}
	if diff := cmp.Diff([]string{"gateway", "--in-cluster", "--metrics-addr", ":9090"}, c.Args); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	sc := c.SecurityContext
	if !*sc.RunAsNonRoot || *sc.RunAsUser != 65532 || *sc.RunAsGroup != 65532 || *sc.AllowPrivilegeEscalation ||
		!*sc.ReadOnlyRootFilesystem || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault ||
		len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("container securityContext = %+v", sc)
	}
	var ports []string
	for _, p := range c.Ports {
		ports = append(ports, p.Name+"/"+string(p.Protocol))
		if p.ContainerPort == ControlPort || p.ContainerPort == StreamPort {
			t.Errorf("port %d exposed; control and stream ports bind 127.0.0.1 only", p.ContainerPort)
		}
	}
	if diff := cmp.Diff([]string{"wireguard/UDP", "metrics/TCP", "relay/TCP"}, ports); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom.SecretKeyRef != nil:
			t.Errorf("env %s from Secret %s: the gateway reads no Secret", e.Name, e.ValueFrom.SecretKeyRef.Name)
		case e.ValueFrom.FieldRef != nil:
			env[e.Name] = "field:" + e.ValueFrom.FieldRef.FieldPath
		}
	}
	wantEnv := map[string]string{
		"POD_NAMESPACE": "field:metadata.namespace",
		"HOST_IP":       "field:status.hostIP",
	}
	if diff := cmp.Diff(wantEnv, env); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	if p := c.ReadinessProbe.HTTPGet; p.Path != "/healthz" || p.Port.IntValue() != MetricsPort {
		t.Errorf("readiness probe %s:%s", p.Path, p.Port.String())
	}
	if c.Resources.Requests.Cpu().String() != "50m" || c.Resources.Requests.Memory().String() != "64Mi" || c.Resources.Limits != nil {
		t.Errorf("resources = %+v", c.Resources)
	}

	if svc.Spec.Type != corev1.ServiceTypeNodePort || svc.Spec.Ports[0].Protocol != corev1.ProtocolUDP ||
		svc.Spec.Ports[0].Port != WireGuardPort || svc.Spec.Ports[0].TargetPort.IntValue() != WireGuardPort ||
		svc.Spec.Selector[LabelName] != GatewayName {
		t.Errorf("service spec = %+v", svc.Spec)
	}
	if relay == nil || relay.Spec.Type != "" || relay.Spec.Ports[0].Port != RelayPort || relay.Spec.Selector[LabelName] != GatewayName {
		t.Errorf("relay service = %+v, want a ClusterIP Service on %d selecting the gateway", relay, RelayPort)
	}
}

func TestGatewayObjectsWithoutNodePort(t *testing.T) {
	for _, o := range GatewayObjects(testSpec) {
		if s, ok := o.(*corev1.Service); ok && s.Name != RelayName {
			t.Error("NodePort Service created without ExposeNodePort")
		}
	}
}

// listAll returns "Kind" for every gateway object present in ns.
func listAll(t *testing.T, client kubernetes.Interface, ns string) []string {
	t.Helper()
	ctx := context.Background()
	var got []string
	get := []struct {
		kind string
		get  func() error
	}{
		{"ServiceAccount", func() error {
			_, err := client.CoreV1().ServiceAccounts(ns).Get(ctx, GatewayName, metav1.GetOptions{})
			return err
		}},
		{"Role", func() error {
			_, err := client.RbacV1().Roles(ns).Get(ctx, GatewayName, metav1.GetOptions{})
			return err
		}},
		{"RoleBinding", func() error {
			_, err := client.RbacV1().RoleBindings(ns).Get(ctx, GatewayName, metav1.GetOptions{})
			return err
		}},
		{"ClusterRole", func() error {
			_, err := client.RbacV1().ClusterRoles().Get(ctx, GatewayName, metav1.GetOptions{})
			return err
		}},
		{"ClusterRoleBinding", func() error {
			_, err := client.RbacV1().ClusterRoleBindings().Get(ctx, GatewayName+"-"+ns, metav1.GetOptions{})
			return err
		}},
		{"Secret", func() error {
			_, err := client.CoreV1().Secrets(ns).Get(ctx, GatewayName, metav1.GetOptions{})
			return err
		}},
		{"Deployment", func() error {
			_, err := client.AppsV1().Deployments(ns).Get(ctx, GatewayName, metav1.GetOptions{})
			return err
		}},
		{"Service", func() error {
			_, err := client.CoreV1().Services(ns).Get(ctx, GatewayName, metav1.GetOptions{})
			return err
		}},
	}
	for _, g := range get {
		err := g.get()
		if err == nil {
			got = append(got, g.kind)
		} else if !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	return got
}

func TestInstallGateway(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset()
	spec := testSpec
	spec.ExposeNodePort = true
	if err := InstallGateway(ctx, client, spec, false); err != nil {
		t.Fatal(err)
	}
	all := []string{"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"}
	if diff := cmp.Diff(all, listAll(t, client, "bt")); diff != "" {
		t.Errorf("objects after install (-want +got):\n%s", diff)
	}
	// The server assigned a NodePort; a re-install must keep it.
	svc, _ := client.CoreV1().Services("bt").Get(ctx, GatewayName, metav1.GetOptions{})
	svc.Spec.Ports[0].NodePort = 31820
	if _, err := client.CoreV1().Services("bt").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	if err := InstallGateway(ctx, client, spec, false); err != nil {
		t.Fatalf("idempotent re-install: %v", err)
	}
	svc, _ = client.CoreV1().Services("bt").Get(ctx, GatewayName, metav1.GetOptions{})
	if svc.Spec.Ports[0].NodePort != 31820 {
		t.Errorf("NodePort after re-install = %d, want 31820 kept", svc.Spec.Ports[0].NodePort)
	}

	// Without ExposeNodePort the stale Service goes.
	if err := InstallGateway(ctx, client, testSpec, false); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(all[:6], listAll(t, client, "bt")); diff != "" {
		t.Errorf("objects after install without NodePort (-want +got):\n%s", diff)
	}

	// Another version: refused without upgrade, applied with it.
	newer := testSpec
	newer.Version = "v2.0.0"
	err := InstallGateway(ctx, client, newer, false)
	want := "gateway in namespace \"bt\" is version v1.0.0, this bridgetun is v2.0.0: run `bridgetun install --upgrade` to replace it"
	if err == nil || err.Error() != want {
		t.Fatalf("version mismatch: got %v, want %q", err, want)
	}
	if err := InstallGateway(ctx, client, newer, true); err != nil {
		t.Fatal(err)
	}
	if v, err := GatewayVersion(ctx, client, "bt"); err != nil || v != "v2.0.0" {
		t.Errorf("GatewayVersion after upgrade = %q, %v; want v2.0.0", v, err)
	}
	d, _ := client.AppsV1().Deployments("bt").Get(ctx, GatewayName, metav1.GetOptions{})
	if got := d.Spec.Template.Annotations[AnnotationVersion]; got != "v2.0.0" {
		t.Errorf("pod template version = %q, want v2.0.0 (so the pods roll)", got)
	}
}

// TestUpgradeDeletesKeySecret: an older gateway kept its key (and a
// namespace-wide sidecar token) in a Secret every developer could read;
// the upgrade deletes it.
func TestUpgradeDeletesKeySecret(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: GatewayName, Namespace: "bt"},
		Data:       map[string][]byte{"private-key": []byte("a2V5LW9uZQ=="), "sidecar-token": []byte("an-old-namespace-wide-token")},
	})
	if err := InstallGateway(ctx, client, testSpec, true); err != nil {
		t.Fatalf("upgrade over an older install's Secret: %v", err)
	}
	if _, err := client.CoreV1().Secrets("bt").Get(ctx, GatewayName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the older install's key Secret after the upgrade: %v, want it deleted", err)
	}
}

func TestUninstallGateway(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset()
	spec := testSpec
	spec.ExposeNodePort = true
	if err := InstallGateway(ctx, client, spec, false); err != nil {
		t.Fatal(err)
	}
	if err := UninstallGateway(ctx, client, "bt"); err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, client, "bt"); len(got) != 0 {
		t.Errorf("left after uninstall: %v", got)
	}
	if err := UninstallGateway(ctx, client, "bt"); err != nil {
		t.Errorf("second uninstall: %v", err)
	}
	if _, err := GatewayVersion(ctx, client, "bt"); !errors.Is(err, ErrGatewayNotInstalled) {
		t.Errorf("GatewayVersion after uninstall: %v, want ErrGatewayNotInstalled", err)
	}
}

// TestUninstallRefusesWhilePatched: a workload still patched for an
// intercept needs the gateway's Secret, so uninstall without --all names it
// and deletes nothing; once restored, uninstall goes ahead.
func TestUninstallRefusesWhilePatched(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset()
	if err := InstallGateway(ctx, client, testSpec, false); err != nil {
		t.Fatal(err)
	}
	before := listAll(t, client, "bt")
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "bt", Labels: map[string]string{LabelPatched: "true"}}}
	if _, err := client.AppsV1().Deployments("bt").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := UninstallGateway(ctx, client, "bt")
	if err == nil || !strings.Contains(err.Error(), "deployment/api in namespace bt") || !strings.Contains(err.Error(), "uninstall --all") {
		t.Fatalf("uninstall with a patched workload: %v, want a refusal naming deployment/api and --all", err)
	}
	if got := listAll(t, client, "bt"); !cmp.Equal(got, before) {
		t.Errorf("after the refusal: %v, want everything still there: %v", got, before)
	}
	dep.Labels = nil
	if _, err := client.AppsV1().Deployments("bt").Update(ctx, dep, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := UninstallGateway(ctx, client, "bt"); err != nil {
		t.Fatalf("uninstall once restored: %v", err)
	}
}

// gatewayFixture installs the gateway and adds the ReplicaSet the
// Deployment controller would have made, plus pods from the given
// statuses, owned by it.
func gatewayFixture(t *testing.T, pods ...corev1.PodStatus) *fake.Clientset {
	t.Helper()
	ctx := t.Context()
	client := fake.NewClientset()
	if err := InstallGateway(ctx, client, testSpec, false); err != nil {
		t.Fatal(err)
	}
	d, _ := client.AppsV1().Deployments("bt").Get(ctx, GatewayName, metav1.GetOptions{})
	d.UID = "dep-uid"
	if _, err := client.AppsV1().Deployments("bt").Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, rev := range []string{"1", "2"} {
		rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{
			Name: GatewayName + "-" + rev, Namespace: "bt", UID: types.UID("rs-" + rev),
			Labels:          map[string]string{LabelName: GatewayName},
			Annotations:     map[string]string{"deployment.kubernetes.io/revision": rev},
			OwnerReferences: []metav1.OwnerReference{{UID: "dep-uid", Kind: "Deployment", Name: GatewayName}},
		}}
		if _, err := client.AppsV1().ReplicaSets("bt").Create(ctx, rs, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// An old, ready pod of revision 1 that must not count.
		if i == 0 {
			createPod(t, client, "old", "rs-1", readyStatus())
		}
	}
	for i, st := range pods {
		createPod(t, client, "new-"+string(rune('a'+i)), "rs-2", st)
	}
	return client
}

func createPod(t *testing.T, client kubernetes.Interface, name string, rsUID types.UID, st corev1.PodStatus) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: GatewayName + "-" + name, Namespace: "bt",
			Labels:          map[string]string{LabelName: GatewayName},
			OwnerReferences: []metav1.OwnerReference{{UID: rsUID, Kind: "ReplicaSet"}},
		},
		Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "gateway", Image: testSpec.Image}}},
		Status: st,
	}
	if _, err := client.CoreV1().Pods("bt").Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func readyStatus() corev1.PodStatus {
	return corev1.PodStatus{
		Phase:      corev1.PodRunning,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
}

func waitingStatus(reason, msg string) corev1.PodStatus {
	return corev1.PodStatus{
		Phase: corev1.PodPending,
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: "gateway", Image: testSpec.Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}},
		}},
	}
}

func TestWaitGatewayReady(t *testing.T) {
	tests := []struct {
		name    string
		pods    []corev1.PodStatus
		wantPod string
		wantErr []string // substrings
	}{
		{name: "ready", pods: []corev1.PodStatus{readyStatus()}, wantPod: GatewayName + "-new-a"},
		{name: "image pull", pods: []corev1.PodStatus{waitingStatus("ErrImagePull", `failed to pull image "bridgetun.local/bridgetun-agent:dev": not found`)},
			wantErr: []string{`container "gateway" (image bridgetun.local/bridgetun-agent:dev): ErrImagePull: failed to pull image`, "check --gateway-image"}},
		{name: "never pull", pods: []corev1.PodStatus{waitingStatus("ErrImageNeverPull", "image not present with pull policy of Never")},
			wantErr: []string{"ErrImageNeverPull", "check --gateway-image"}},
		{name: "crash loop", pods: []corev1.PodStatus{waitingStatus("CrashLoopBackOff", "back-off 10s")},
			wantErr: []string{"keeps crashing", "check --gateway-image", "kubectl -n bt logs"}},
		{name: "only the old revision is ready", wantErr: []string{"not ready", context.DeadlineExceeded.Error()}},
		{name: "creating", pods: []corev1.PodStatus{waitingStatus("ContainerCreating", "")},
			wantErr: []string{"ContainerCreating", context.DeadlineExceeded.Error()}},
		// The kubelet retries these by itself: wait them out, naming the state at the deadline.
		{name: "secret cache not synced", pods: []corev1.PodStatus{waitingStatus("CreateContainerConfigError", "failed to sync secret cache: timed out waiting for the condition")},
			wantErr: []string{"CreateContainerConfigError failed to sync secret cache", context.DeadlineExceeded.Error()}},
		{name: "registry timeout", pods: []corev1.PodStatus{waitingStatus("ErrImagePull", `failed to pull image "x": dial tcp 10.0.0.1:443: i/o timeout`)},
			wantErr: []string{"ErrImagePull", context.DeadlineExceeded.Error()}},
		{name: "invalid image name", pods: []corev1.PodStatus{waitingStatus("InvalidImageName", `couldn't parse image name "Bad:Name"`)},
			wantErr: []string{"InvalidImageName", "check --gateway-image"}},
		{name: "missing secret", pods: []corev1.PodStatus{waitingStatus("CreateContainerConfigError", `secret "bridgetun-gateway" not found`)},
			wantErr: []string{`CreateContainerConfigError: secret "bridgetun-gateway" not found`, "run `bridgetun install`"}},
		{name: "manifest unknown", pods: []corev1.PodStatus{waitingStatus("ErrImagePull", `failed to pull and unpack image: manifest unknown`)},
			wantErr: []string{"manifest unknown", "check --gateway-image"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := gatewayFixture(t, tt.pods...)
			ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
			defer cancel()
			start := time.Now()
			pod, err := WaitGatewayReady(ctx, client, "bt")
			if tt.wantPod != "" {
				if err != nil || pod.Name != tt.wantPod {
					t.Fatalf("got %v, %v; want pod %s", pod, err, tt.wantPod)
				}
				return
			}
			if err == nil {
				t.Fatalf("got pod %s, want an error", pod.Name)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
				if took := time.Since(start); took > 200*time.Millisecond {
					t.Errorf("fail-fast took %v", took)
				}
			}
			t.Log(err)
		})
	}
}

func TestWaitGatewayReadyBecomesReady(t *testing.T) {
	client := gatewayFixture(t, waitingStatus("ContainerCreating", ""))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	go func() {
		time.Sleep(300 * time.Millisecond) // the kubelet, later
		p, _ := client.CoreV1().Pods("bt").Get(ctx, GatewayName+"-new-a", metav1.GetOptions{})
		p.Status = readyStatus()
		client.CoreV1().Pods("bt").UpdateStatus(ctx, p, metav1.UpdateOptions{})
	}()
	pod, err := WaitGatewayReady(ctx, client, "bt")
	if err != nil || pod.Name != GatewayName+"-new-a" {
		t.Fatalf("got %v, %v", pod, err)
	}
}

func TestWaitGatewayNotInstalled(t *testing.T) {
	_, err := WaitGatewayReady(t.Context(), fake.NewClientset(), "bt")
	if !errors.Is(err, ErrGatewayNotInstalled) {
		t.Errorf("got %v, want ErrGatewayNotInstalled", err)
	}
}
