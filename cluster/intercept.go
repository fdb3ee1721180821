package cluster

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Intercepting a Service patches the workload behind it: an init container
// (NET_ADMIN) redirects the pod's inbound TCP for the container port to a
// sidecar, which relays connections to the workstation or passes them to
// the original container. The workload's original pod template is saved in
// an annotation and put back, byte for byte, by RestoreWorkload.

// Names bridgetun gives to what it adds to an intercepted workload.
const (
	AnnotationOriginalTemplate = "bridgetun.io/original-template" // JSON of the original spec.template
	AnnotationPatchedAt        = "bridgetun.io/patched-at"        // RFC 3339
	AnnotationInterceptPort    = "bridgetun.io/intercept-port"    // the intercepted container port
	AnnotationGrace            = "bridgetun.io/grace"             // Go duration: how long the gateway holds the patch for a silent workstation
	AnnotationPatchedBy        = "bridgetun.io/patched-by"        // the patching workstation's public key: its next session repairs what a crash left
	LabelPatched               = "bridgetun.io/patched"           // "true"; PatchedWorkloads lists by it

	InitContainerName    = "bridgetun-init"
	SidecarContainerName = "bridgetun-sidecar"
	SidecarPortName      = "bt-intercept"
	SidecarMetricsName   = "bt-metrics"
	RelayTokenVolume     = "bridgetun-relay-token"                     // projected ServiceAccount token, mounted into the sidecar only
	RelayTokenPath       = "/var/run/secrets/bridgetun.io/relay/token" // where the sidecar reads it (its --token-file)
	RelayTokenSeconds    = 600                                         // the token's lifetime (the API server's minimum; the kubelet renews at 80%)
	relayTokenDir        = "/var/run/secrets/bridgetun.io/relay"
	relayTokenFile       = "token"

	DefaultSidecarPort = 15001
	DefaultProbePort   = 15002
	DefaultMetricsPort = 15090
	DefaultSidecarUID  = 65532
)

// Kinds of workload bridgetun can intercept.
const (
	KindDeployment  = "Deployment"
	KindStatefulSet = "StatefulSet"
	KindReplicaSet  = "ReplicaSet"
)

// InterceptTarget is the workload and container port behind a Service port.
type InterceptTarget struct {
	Namespace, Service string
	ServicePort        corev1.ServicePort
	Kind, Name         string // "Deployment" | "StatefulSet" | "ReplicaSet"
	Container          string // the container that listens on ContainerPort
	ContainerPort      int32
	Replicas           int32
}

// Ref names the target's workload.
func (t InterceptTarget) Ref() WorkloadRef {
	return WorkloadRef{Namespace: t.Namespace, Kind: t.Kind, Name: t.Name}
}

// WorkloadRef names a Deployment, StatefulSet or ReplicaSet.
type WorkloadRef struct {
	Namespace, Kind, Name string
	PatchedAt             time.Time     // from the patched-at annotation; zero if unknown
	Grace                 time.Duration // from the grace annotation; zero if unknown
	PatchedBy             string        // from the patched-by annotation; "" if unknown
}

// String is "deployment/api", plus " in namespace NS" when the namespace
// is set: the first part pastes into kubectl.
func (r WorkloadRef) String() string {
	s := strings.ToLower(r.Kind) + "/" + r.Name
	if r.Namespace != "" {
		s += " in namespace " + r.Namespace
	}
	return s
}

// ResolveInterceptTarget finds the workload and container port behind
// Service ns/service. port is the Service port's name or number; "" means
// its only port. The workload is the controller of the Service's pods
// (a ReplicaSet's Deployment, if it has one); a Service whose pods belong
// to several workloads is an error, since intercepting one of them would
// catch only part of the traffic.
func ResolveInterceptTarget(ctx context.Context, client kubernetes.Interface, ns, service, port string) (InterceptTarget, error) {
	svc, err := client.CoreV1().Services(ns).Get(ctx, service, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return InterceptTarget{}, fmt.Errorf("service %s/%s not found: check `kubectl -n %s get services`", ns, service, ns)
	}
	if err != nil {
		return InterceptTarget{}, fmt.Errorf("get service %s/%s: %w", ns, service, err)
	}
	if len(svc.Spec.Selector) == 0 {
		return InterceptTarget{}, fmt.Errorf("service %s/%s has no selector: no workload serves it, so there is nothing to intercept", ns, service)
	}
	sp, err := servicePort(svc, port)
	if err != nil {
		return InterceptTarget{}, err
	}
	if proto(sp) != corev1.ProtocolTCP {
		return InterceptTarget{}, fmt.Errorf("port %s of service %s/%s is %s: bridgetun intercepts TCP only", portLabel(sp), ns, service, proto(sp))
	}

	t := InterceptTarget{Namespace: ns, Service: service, ServicePort: sp}
	w, err := serviceWorkload(ctx, client, svc)
	if err != nil {
		return InterceptTarget{}, err
	}
	t.Kind, t.Name = w.ref.Kind, w.ref.Name
	t.Replicas = 1
	if w.replicas != nil {
		t.Replicas = *w.replicas
	}
	t.Container, t.ContainerPort, err = targetContainer(w.template, sp.TargetPort, sp.Port)
	if err != nil {
		return InterceptTarget{}, fmt.Errorf("service %s/%s port %s: %s %w", ns, service, portLabel(sp), w.ref, err)
	}
	return t, nil
}

// servicePort picks the Service port named or numbered port.
func servicePort(svc *corev1.Service, port string) (corev1.ServicePort, error) {
	ports := svc.Spec.Ports
	var list []string
	for _, p := range ports {
		list = append(list, portLabel(p))
	}
	if len(ports) == 0 {
		return corev1.ServicePort{}, fmt.Errorf("service %s/%s has no ports", svc.Namespace, svc.Name)
	}
	if port == "" {
		if len(ports) > 1 {
			return corev1.ServicePort{}, fmt.Errorf("service %s/%s has several ports (%s): choose one with --port LOCAL:REMOTE",
				svc.Namespace, svc.Name, strings.Join(list, ", "))
		}
		return ports[0], nil
	}
	for _, p := range ports {
		if p.Name == port {
			return p, nil
		}
	}
	if n, err := strconv.Atoi(port); err == nil {
		for _, p := range ports {
			if int(p.Port) == n {
				return p, nil
			}
		}
	}
	return corev1.ServicePort{}, fmt.Errorf("service %s/%s has no port %q: its ports are %s",
		svc.Namespace, svc.Name, port, strings.Join(list, ", "))
}

// portLabel is "http:80" for a named port, "80" otherwise.
func portLabel(p corev1.ServicePort) string {
	if p.Name == "" {
		return strconv.Itoa(int(p.Port))
	}
	return p.Name + ":" + strconv.Itoa(int(p.Port))
}

// serviceWorkload returns the workload controlling the Service's pods.
func serviceWorkload(ctx context.Context, client kubernetes.Interface, svc *corev1.Service) (*workload, error) {
	ns, name := svc.Namespace, svc.Name
	sel := labels.SelectorFromSet(svc.Spec.Selector).String()
	pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("list pods of service %s/%s: %w", ns, name, err)
	}
	if len(pods.Items) == 0 {
		return nil, fmt.Errorf("service %s/%s has no pods (selector %s): nothing to intercept; check `kubectl -n %s get pods -l %s`",
			ns, name, sel, ns, sel)
	}
	// Running pods first, then other live ones; terminating pods count
	// only when there is nothing else.
	rank := func(p *corev1.Pod) int {
		switch {
		case p.DeletionTimestamp != nil:
			return 2
		case p.Status.Phase == corev1.PodRunning:
			return 0
		}
		return 1
	}
	items := slices.Clone(pods.Items)
	slices.SortStableFunc(items, func(a, b corev1.Pod) int { return rank(&a) - rank(&b) })
	if rank(&items[0]) < 2 {
		items = slices.DeleteFunc(items, func(p corev1.Pod) bool { return p.DeletionTimestamp != nil })
	}

	var found []*workload
	seen := map[string]bool{} // "Kind/name" of controllers already followed
	for i := range items {
		p := &items[i]
		key := "Pod/" + p.Name
		if c := metav1.GetControllerOf(p); c != nil {
			key = c.Kind + "/" + c.Name
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		w, other, err := podWorkload(ctx, client, p)
		if err != nil {
			return nil, fmt.Errorf("service %s/%s: %w", ns, name, err)
		}
		if w == nil {
			return nil, fmt.Errorf("service %s/%s is served by %s: bridgetun can intercept Deployments, StatefulSets and ReplicaSets", ns, name, other)
		}
		if !slices.ContainsFunc(found, func(x *workload) bool { return x.ref.Kind == w.ref.Kind && x.ref.Name == w.ref.Name }) {
			found = append(found, w)
		}
	}
	if len(found) > 1 {
		var names []string
		for _, w := range found {
			names = append(names, w.ref.Kind+"/"+w.ref.Name)
		}
		return nil, fmt.Errorf("service %s/%s selects pods of several workloads (%s): intercepting one would catch only part of its traffic",
			ns, name, strings.Join(names, ", "))
	}
	return found[0], nil
}

// podWorkload follows p's controller to an interceptable workload. When
// the chain ends at anything else, w is nil and other names it
// ("DaemonSet/agent", "Pod/name" for a bare pod).
func podWorkload(ctx context.Context, client kubernetes.Interface, p *corev1.Pod) (w *workload, other string, err error) {
	c := metav1.GetControllerOf(p)
	if c == nil {
		return nil, "Pod/" + p.Name, nil
	}
	other = c.Kind + "/" + c.Name
	if !isApps(c.APIVersion) {
		return nil, other, nil
	}
	switch c.Kind {
	case KindStatefulSet:
		w, err = getWorkload(ctx, client, WorkloadRef{Namespace: p.Namespace, Kind: KindStatefulSet, Name: c.Name})
		return w, "", err
	case KindReplicaSet:
		rs, err := client.AppsV1().ReplicaSets(p.Namespace).Get(ctx, c.Name, metav1.GetOptions{})
		if err != nil {
			return nil, "", fmt.Errorf("get replicaset %s/%s of pod %s: %w", p.Namespace, c.Name, p.Name, err)
		}
		rc := metav1.GetControllerOf(rs)
		switch {
		case rc == nil:
			return replicaSetWorkload(client, rs), "", nil
		case rc.Kind == KindDeployment && isApps(rc.APIVersion):
			w, err = getWorkload(ctx, client, WorkloadRef{Namespace: p.Namespace, Kind: KindDeployment, Name: rc.Name})
			return w, "", err
		}
		return nil, rc.Kind + "/" + rc.Name, nil // an Argo Rollout, say
	}
	return nil, other, nil
}

func isApps(apiVersion string) bool { return strings.HasPrefix(apiVersion, appsv1.GroupName+"/") }

// targetContainer finds the container and port a Service targetPort
// names: a number (0 means the Service port) or a container port name.
// A number no container declares goes to the first container.
func targetContainer(t *corev1.PodTemplateSpec, target intstr.IntOrString, servicePort int32) (string, int32, error) {
	cs := t.Spec.Containers
	if len(cs) == 0 {
		return "", 0, fmt.Errorf("has no containers")
	}
	if target.Type == intstr.String {
		for _, c := range cs {
			for _, p := range c.Ports {
				if p.Name == target.StrVal {
					return c.Name, p.ContainerPort, nil
				}
			}
		}
		return "", 0, fmt.Errorf("declares no container port named %q (the Service's targetPort)", target.StrVal)
	}
	port := target.IntVal
	if port == 0 {
		port = servicePort
	}
	for _, c := range cs {
		for _, p := range c.Ports {
			if p.ContainerPort == port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
				return c.Name, port, nil
			}
		}
	}
	return cs[0].Name, port, nil
}
