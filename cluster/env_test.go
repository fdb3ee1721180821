package cluster

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestContainerEnv(t *testing.T) {
	yes := true
	client := fake.NewClientset(
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: "app"}, Data: map[string]string{"MODE": "debug", "SHARED": "from-cm", "bad key": "x"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sec", Namespace: "app"}, Data: map[string][]byte{"token": []byte("s3cret"), "SHARED": []byte("from-secret")}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "stats-db", Namespace: "app"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.30",
			Ports: []corev1.ServicePort{{Name: "sql", Port: 5432}}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "headless", Namespace: "app"}, Spec: corev1.ServiceSpec{ClusterIP: "None", Ports: []corev1.ServicePort{{Port: 80}}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.1",
			Ports: []corev1.ServicePort{{Name: "https", Port: 443}}}},
	)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "api-1", Namespace: "app", UID: "u-1", Labels: map[string]string{"app": "api"}},
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{
			Name: "api",
			EnvFrom: []corev1.EnvFromSource{
				{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}},
				{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}}, Prefix: "S_"},
				{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "missing"}, Optional: &yes}},
			},
			Env: []corev1.EnvVar{
				{Name: "GREETING", Value: "hello $(MODE) $$(MODE) $(NOPE)"},
				{Name: "MODE", Value: "override"}, // later env wins over envFrom
				{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "token"}}},
				{Name: "OPT", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "absent", Optional: &yes}}},
				{Name: "POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
				{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
				{Name: "DB", Value: "$(STATS_DB_SERVICE_HOST):$(STATS_DB_SERVICE_PORT)"},
				{Name: "STATS_DB_SERVICE_PORT", Value: "9999"}, // user value beats the service link
			},
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("100M")}},
		}}},
	}
	got, err := ContainerEnv(t.Context(), client, pod, "api")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range got {
		m[e.Name] = e.Value
	}
	want := map[string]string{
		"MODE": "override", "SHARED": "from-cm", "S_token": "s3cret", "S_SHARED": "from-secret",
		"GREETING": "hello debug $(MODE) $(NOPE)", "TOKEN": "s3cret", "POD": "api-1", "APP": "api",
		"MEM_MI": "96", "DB": "10.96.0.30:5432", "STATS_DB_SERVICE_PORT": "9999",
		"STATS_DB_SERVICE_HOST": "10.96.0.30", "STATS_DB_SERVICE_PORT_SQL": "5432",
		"STATS_DB_PORT": "tcp://10.96.0.30:5432", "STATS_DB_PORT_5432_TCP": "tcp://10.96.0.30:5432",
		"STATS_DB_PORT_5432_TCP_PROTO": "tcp", "STATS_DB_PORT_5432_TCP_PORT": "5432", "STATS_DB_PORT_5432_TCP_ADDR": "10.96.0.30",
		"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443", "KUBERNETES_SERVICE_PORT_HTTPS": "443",
		"KUBERNETES_PORT": "tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
		"KUBERNETES_PORT_443_TCP_PROTO": "tcp", "KUBERNETES_PORT_443_TCP_PORT": "443", "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
	}
	if d := cmp.Diff(want, m); d != "" {
		t.Errorf("env (-want +got):\n%s", d)
	}
	if got[0].Name != "MODE" || got[len(got)-1].Name != "STATS_DB_SERVICE_PORT_SQL" {
		t.Errorf("order: first %s last %s, want envFrom keys first and service links last", got[0].Name, got[len(got)-1].Name)
	}

	if _, err := ContainerEnv(t.Context(), client, pod, "nope"); err == nil {
		t.Error("unknown container: got nil error")
	}
	pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: "REQ",
		ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "absent"}}})
	if _, err := ContainerEnv(t.Context(), client, pod, "api"); err == nil {
		t.Error("required secret key missing: got nil error")
	}
}

func TestExpand(t *testing.T) {
	vals := map[string]string{"A": "1"}
	for _, tc := range []struct{ in, want string }{
		{"$(A)", "1"}, {"x$(A)y", "x1y"}, {"$$(A)", "$(A)"}, {"$(B)", "$(B)"}, {"$(A", "$(A"}, {"$", "$"}, {"a$b", "a$b"},
	} {
		if got := expand(tc.in, vals, nil); got != tc.want {
			t.Errorf("expand(%q): got %q, want %q", tc.in, got, tc.want)
		}
	}
}
