package cluster

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/bridgetun/bridgetun/internal/version"
)

// GatewaySpec describes the in-cluster gateway to install.
type GatewaySpec struct {
	Namespace      string            // "" = "default"
	Image          string            // e.g. bridgetun.local/bridgetun-agent:dev
	PullPolicy     corev1.PullPolicy // "" = IfNotPresent
	ExposeNodePort bool              // also create a UDP NodePort Service for WireGuard
	Version        string            // "" = internal/version.Version
	// Policy is what the gateway's destination policy knows of the
	// cluster (DiscoverGatewayPolicy); zero = it dials nothing of the
	// cluster for workstations.
	Policy GatewayPolicy
}

// Names and ports of the gateway.
const (
	GatewayName   = "bridgetun-gateway" // Deployment, ServiceAccount, Role, RoleBinding, Service (and an older install's key Secret)
	ControlPort   = 8081                // control API on 127.0.0.1 in the pod (port-forward only)
	StreamPort    = 8082                // stream transport on 127.0.0.1 in the pod (port-forward only)
	WireGuardPort = 51820               // UDP container port
	MetricsPort   = 9090                // /metrics and /healthz on the pod IP
	RelayPort     = 8083                // sidecars: route tables and CONNECT into workstation tunnels (their pods' ServiceAccount tokens)
	RelayName     = "bridgetun-relay"   // ClusterIP Service in front of RelayPort: sidecars survive a gateway restart

	GatewayContainer = "gateway"

	LabelName         = "app.kubernetes.io/name"
	AnnotationVersion = "bridgetun.io/version"
	gatewayUID        = 65532
)

// GatewaySelector is the label selector matching gateway pods.
const GatewaySelector = LabelName + "=" + GatewayName

func (s GatewaySpec) withDefaults() GatewaySpec {
	if s.Namespace == "" {
		s.Namespace = "default"
	}
	if s.PullPolicy == "" {
		s.PullPolicy = corev1.PullIfNotPresent
	}
	if s.Version == "" {
		s.Version = version.Version
	}
	return s
}

// NewToken returns 32 random bytes, base64url-encoded.
func NewToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// GatewayObjects returns the gateway's objects in creation order:
// ServiceAccount, Role, RoleBinding, ClusterRole, ClusterRoleBinding,
// Deployment, the relay Service and, with
// ExposeNodePort, the NodePort Service. TypeMeta is set on each.
func GatewayObjects(spec GatewaySpec) []runtime.Object {
	s := spec.withDefaults()
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{
			Name:      GatewayName,
			Namespace: s.Namespace,
			Labels: map[string]string{
				LabelName:                      GatewayName,
				"app.kubernetes.io/part-of":    "bridgetun",
				"app.kubernetes.io/managed-by": "bridgetun",
			},
			Annotations: map[string]string{AnnotationVersion: s.Version},
		}
	}
	objs := []runtime.Object{
		&corev1.ServiceAccount{
			TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
			ObjectMeta:                   meta(),
			AutomountServiceAccountToken: ptr(true),
		},
		&rbacv1.Role{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
			ObjectMeta: meta(),
			Rules:      gatewayRoleRules(),
		},
		&rbacv1.RoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
			ObjectMeta: meta(),
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: GatewayName},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: GatewayName, Namespace: s.Namespace}},
		},
		&rbacv1.ClusterRole{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
			ObjectMeta: clusterMeta(meta(), GatewayName),
			Rules:      gatewayClusterRules(),
		},
		&rbacv1.ClusterRoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
			ObjectMeta: clusterMeta(meta(), gatewayClusterBindingName(s.Namespace)),
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: GatewayName},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: GatewayName, Namespace: s.Namespace}},
		},
		gatewayDeployment(s, meta()),
		relayService(s.Namespace, meta()),
	}
	if s.ExposeNodePort {
		objs = append(objs, gatewayNodePortService(meta()))
	}
	return objs
}

// gatewayRoleRules is all the gateway may do, in its own namespace only:
// read Services, Endpoints/EndpointSlices and Pods, to resolve and dial
// in-namespace workloads and to check that a sidecar's pod backs the
// Service whose routes it asks for; put back the pod templates of
// workloads whose intercept lease ran out (update the workload, delete
// pods of a bare ReplicaSet so they take the template); and create pods,
// which it only ever does as a server-side dry run, to check a patched pod
// against admission before it patches a workload for a caller.
func gatewayRoleRules() []rbacv1.PolicyRule {
	read := []string{"get", "list", "watch"}
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services", "endpoints"}, Verbs: read},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: append(read, "create", "delete")},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments", "statefulsets", "replicasets"}, Verbs: append(read, "update", "patch")},
	}
}

// gatewayClusterRules is what the gateway needs beyond its namespace, all
// of it to check callers rather than to act: verify a caller's token
// (TokenReview) and rights (SubjectAccessReview) — what the built-in
// system:auth-delegator grants — and read (then delete: they are
// single-use) identity CSRs, which vouch for callers whose kubeconfig has
// no bearer token.
func gatewayClusterRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
		{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}, Verbs: []string{"create"}},
		{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"certificatesigningrequests"}, Verbs: []string{"get", "delete"}},
	}
}

// gatewayClusterBindingName names one namespace's gateway binding to the
// shared ClusterRole.
func gatewayClusterBindingName(ns string) string { return GatewayName + "-" + ns }

// clusterMeta turns a namespaced object's metadata into a cluster-scoped
// object's, named name.
func clusterMeta(m metav1.ObjectMeta, name string) metav1.ObjectMeta {
	m.Name, m.Namespace = name, ""
	return m
}

// relayService fronts the gateway's relay port for sidecars.
func relayService(ns string, meta metav1.ObjectMeta) *corev1.Service {
	meta.Name, meta.Namespace = RelayName, ns
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: meta,
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{LabelName: GatewayName},
			Ports: []corev1.ServicePort{{
				Name: "relay", Protocol: corev1.ProtocolTCP,
				Port: RelayPort, TargetPort: intstr.FromInt32(RelayPort),
			}},
		},
	}
}

func gatewayDeployment(s GatewaySpec, meta metav1.ObjectMeta) *appsv1.Deployment {
	podLabels := map[string]string{LabelName: GatewayName, "app.kubernetes.io/part-of": "bridgetun"}
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: meta,
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(1)),
			// Recreate: one gateway at a time holds the namespace's peers
			// (each makes its own key at start).
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelName: GatewayName}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels: podLabels,
					Annotations: map[string]string{
						"prometheus.io/scrape": "true",
						"prometheus.io/port":   fmt.Sprint(MetricsPort),
						AnnotationVersion:      s.Version,
					},
				},
				Spec: corev1.PodSpec{
					ServiceAccountName:           GatewayName,
					AutomountServiceAccountToken: ptr(true),
					SecurityContext: &corev1.PodSecurityContext{
						// A namespaced "safe" sysctl: lets the unprivileged
						// gateway answer ICMP echo through ping sockets.
						Sysctls: []corev1.Sysctl{{Name: "net.ipv4.ping_group_range", Value: "0 2147483647"}},
					},
					Containers: []corev1.Container{{
						Name:            GatewayContainer,
						Image:           s.Image,
						ImagePullPolicy: s.PullPolicy,
						Args:            append([]string{"gateway", "--in-cluster", "--metrics-addr", fmt.Sprintf(":%d", MetricsPort)}, s.Policy.args()...),
						Env: []corev1.EnvVar{
							{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
							// The node, whose kubelet the destination policy refuses.
							{Name: "HOST_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
						},
						// The control (8081) and stream (8082) ports bind
						// 127.0.0.1 and are reached only by port-forward.
						Ports: []corev1.ContainerPort{
							{Name: "wireguard", ContainerPort: WireGuardPort, Protocol: corev1.ProtocolUDP},
							{Name: "metrics", ContainerPort: MetricsPort, Protocol: corev1.ProtocolTCP},
							{Name: "relay", ContainerPort: RelayPort, Protocol: corev1.ProtocolTCP},
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
								Path: "/healthz", Port: intstr.FromInt32(MetricsPort),
							}},
							PeriodSeconds: 2,
						},
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceCPU:    resource.MustParse("50m"),
							corev1.ResourceMemory: resource.MustParse("64Mi"),
						}},
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot:             ptr(true),
							RunAsUser:                ptr(int64(gatewayUID)),
							RunAsGroup:               ptr(int64(gatewayUID)),
							AllowPrivilegeEscalation: ptr(false),
							ReadOnlyRootFilesystem:   ptr(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
							SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
						},
					}},
				},
			},
		},
	}
}

func gatewayNodePortService(meta metav1.ObjectMeta) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: meta,
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: map[string]string{LabelName: GatewayName},
			Ports: []corev1.ServicePort{{
				Name: "wireguard", Protocol: corev1.ProtocolUDP,
				Port: WireGuardPort, TargetPort: intstr.FromInt32(WireGuardPort),
			}},
		},
	}
}

// GatewayYAML renders GatewayObjects as multi-document YAML.
func GatewayYAML(spec GatewaySpec) ([]byte, error) {
	return ObjectsYAML(GatewayObjects(spec))
}

// Decoder decodes the YAML or JSON of built-in kinds (as GatewayYAML emits).
func Decoder() runtime.Decoder { return scheme.Codecs.UniversalDeserializer() }

func ptr[T any](v T) *T { return &v }
