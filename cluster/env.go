package cluster

import (
	"context"
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// EnvVar is one resolved variable.
type EnvVar struct{ Name, Value string }

// ContainerEnv resolves a container's environment the way the kubelet does
// (pkg/kubelet/kubelet_pods.go makeEnvironmentVariables): service link
// variables, then envFrom sources (later ones win, Prefix applied, keys that
// are not valid names skipped), then env entries with $(VAR) expansion and
// valueFrom references; service variables never override the others. The
// result is in that order, which is also the order a dotenv file needs.
func ContainerEnv(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, container string) ([]EnvVar, error) {
	var c *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == container {
			c = &pod.Spec.Containers[i]
		}
	}
	if c == nil {
		return nil, fmt.Errorf("pod %s/%s has no container %q", pod.Namespace, pod.Name, container)
	}
	svcEnv, err := serviceLinkEnv(ctx, client, pod)
	if err != nil {
		return nil, err
	}
	var order []string
	vals := map[string]string{}
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = v
	}
	for _, src := range c.EnvFrom {
		data, err := envFromData(ctx, client, pod.Namespace, src)
		if err != nil {
			return nil, err
		}
		for _, k := range slices.Sorted(maps.Keys(data)) {
			name := src.Prefix + k
			if !validEnvName.MatchString(name) {
				continue // the kubelet skips these too (and records an event)
			}
			set(name, data[k])
		}
	}
	for _, e := range c.Env {
		v := expand(e.Value, vals, svcEnv)
		if e.ValueFrom != nil {
			var ok bool
			v, ok, err = valueFrom(ctx, client, pod, c, e.ValueFrom)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			if !ok {
				continue // optional reference that does not exist
			}
		}
		set(e.Name, v)
	}
	for _, k := range slices.Sorted(maps.Keys(svcEnv)) {
		if _, ok := vals[k]; !ok {
			set(k, svcEnv[k])
		}
	}
	out := make([]EnvVar, 0, len(order))
	for _, k := range order {
		out = append(out, EnvVar{k, vals[k]})
	}
	return out, nil
}

var validEnvName = regexp.MustCompile(`^[-._a-zA-Z][-._a-zA-Z0-9]*$`)

// expand replaces $(NAME) with earlier variables or service variables;
// $$ is a literal $, and unknown references stay as written (kubelet rules).
func expand(s string, vals, svc map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := vals[name]; ok {
				b.WriteString(v)
			} else if v, ok := svc[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func envFromData(ctx context.Context, client kubernetes.Interface, ns string, src corev1.EnvFromSource) (map[string]string, error) {
	switch {
	case src.ConfigMapRef != nil:
		cm, err := client.CoreV1().ConfigMaps(ns).Get(ctx, src.ConfigMapRef.Name, metav1.GetOptions{})
		if err != nil {
			if optional(src.ConfigMapRef.Optional) && notFound(err) {
				return nil, nil
			}
			return nil, fmt.Errorf("envFrom configMap %q: %w", src.ConfigMapRef.Name, err)
		}
		return cm.Data, nil
	case src.SecretRef != nil:
		s, err := client.CoreV1().Secrets(ns).Get(ctx, src.SecretRef.Name, metav1.GetOptions{})
		if err != nil {
			if optional(src.SecretRef.Optional) && notFound(err) {
				return nil, nil
			}
			return nil, fmt.Errorf("envFrom secret %q: %w", src.SecretRef.Name, err)
		}
		out := make(map[string]string, len(s.Data))
		for k, v := range s.Data {
			out[k] = string(v)
		}
		return out, nil
	}
	return nil, nil
}

// valueFrom resolves one reference; ok is false for a missing optional one.
func valueFrom(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, c *corev1.Container, src *corev1.EnvVarSource) (string, bool, error) {
	switch {
	case src.ConfigMapKeyRef != nil:
		r := src.ConfigMapKeyRef
		cm, err := client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if optional(r.Optional) && notFound(err) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configMap %q: %w", r.Name, err)
		}
		v, ok := cm.Data[r.Key]
		if !ok && !optional(r.Optional) {
			return "", false, fmt.Errorf("configMap %q has no key %q", r.Name, r.Key)
		}
		return v, ok, nil
	case src.SecretKeyRef != nil:
		r := src.SecretKeyRef
		s, err := client.CoreV1().Secrets(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if optional(r.Optional) && notFound(err) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secret %q: %w", r.Name, err)
		}
		v, ok := s.Data[r.Key]
		if !ok && !optional(r.Optional) {
			return "", false, fmt.Errorf("secret %q has no key %q", r.Name, r.Key)
		}
		return string(v), ok, nil
	case src.FieldRef != nil:
		v, err := fieldValue(pod, src.FieldRef.FieldPath)
		return v, err == nil, err
	case src.ResourceFieldRef != nil:
		v, err := resourceValue(c, src.ResourceFieldRef)
		return v, err == nil, err
	}
	return "", false, fmt.Errorf("valueFrom has no source")
}

var labelPath = regexp.MustCompile(`^metadata\.(labels|annotations)\['(.+)'\]$`)

func fieldValue(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.podIPs":
		var ips []string
		for _, ip := range pod.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		return strings.Join(ips, ","), nil
	}
	if m := labelPath.FindStringSubmatch(path); m != nil {
		if m[1] == "labels" {
			return pod.Labels[m[2]], nil
		}
		return pod.Annotations[m[2]], nil
	}
	return "", fmt.Errorf("fieldRef %q is not supported", path)
}

// resourceValue divides the container's limit or request by the divisor,
// rounding up as the kubelet does. An unset one (the kubelet would use the
// node's allocatable) is an error naming it rather than a made-up number.
func resourceValue(c *corev1.Container, r *corev1.ResourceFieldSelector) (string, error) {
	kind, name, ok := strings.Cut(r.Resource, ".")
	if !ok {
		return "", fmt.Errorf("resourceFieldRef %q is not supported", r.Resource)
	}
	list := c.Resources.Requests
	if kind == "limits" {
		list = c.Resources.Limits
	}
	q, has := list[corev1.ResourceName(name)]
	if !has {
		return "", fmt.Errorf("resourceFieldRef %q: the container sets no %s (the kubelet would use the node's allocatable)", r.Resource, r.Resource)
	}
	div := r.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	v := math.Ceil(float64(q.MilliValue()) / float64(div.MilliValue()))
	return strconv.FormatInt(int64(v), 10), nil
}

// serviceLinkEnv builds the Docker-link style variables for the pod's
// namespace (when enableServiceLinks allows) plus the master "kubernetes"
// Service, which the kubelet always adds.
func serviceLinkEnv(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod) (map[string]string, error) {
	out := map[string]string{}
	var svcs []corev1.Service
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		list, err := client.CoreV1().Services(pod.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list services in %q (for service link variables): %w", pod.Namespace, err)
		}
		svcs = list.Items
	}
	if pod.Namespace != metav1.NamespaceDefault || len(svcs) == 0 {
		if k, err := client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil {
			svcs = append(svcs, *k)
		}
	}
	for _, s := range svcs {
		ip := s.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone || len(s.Spec.Ports) == 0 {
			continue
		}
		name := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
		first := s.Spec.Ports[0]
		out[name+"_SERVICE_HOST"] = ip
		out[name+"_SERVICE_PORT"] = strconv.Itoa(int(first.Port))
		out[name+"_PORT"] = fmt.Sprintf("%s://%s:%d", strings.ToLower(string(proto(first))), ip, first.Port)
		for _, p := range s.Spec.Ports {
			if p.Name != "" {
				out[name+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_"))] = strconv.Itoa(int(p.Port))
			}
			pfx := fmt.Sprintf("%s_PORT_%d_%s", name, p.Port, strings.ToUpper(string(proto(p))))
			out[pfx] = fmt.Sprintf("%s://%s:%d", strings.ToLower(string(proto(p))), ip, p.Port)
			out[pfx+"_PROTO"] = strings.ToLower(string(proto(p)))
			out[pfx+"_PORT"] = strconv.Itoa(int(p.Port))
			out[pfx+"_ADDR"] = ip
		}
	}
	return out, nil
}

func proto(p corev1.ServicePort) corev1.Protocol {
	if p.Protocol == "" {
		return corev1.ProtocolTCP
	}
	return p.Protocol
}

func optional(b *bool) bool { return b != nil && *b }

func notFound(err error) bool { return apierrors.IsNotFound(err) }
