package cluster

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// DeveloperRoleName names the Role (in the gateway namespace) and the
// ClusterRole that `bridgetun install --print-rbac` emits for developers.
const DeveloperRoleName = "bridgetun-developer"

// ParseSubject reads an RBAC subject written user:NAME, group:NAME or
// serviceaccount:NAMESPACE:NAME.
func ParseSubject(s string) (rbacv1.Subject, error) {
	kind, rest, ok := strings.Cut(s, ":")
	switch {
	case ok && kind == "user" && rest != "":
		return rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: rest}, nil
	case ok && kind == "group" && rest != "":
		return rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: rest}, nil
	case ok && kind == "serviceaccount":
		if ns, name, ok := strings.Cut(rest, ":"); ok && ns != "" && name != "" {
			return rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}, nil
		}
	}
	return rbacv1.Subject{}, fmt.Errorf("subject %q: write user:NAME, group:NAME or serviceaccount:NAMESPACE:NAME", s)
}

// DeveloperRBAC is what an admin grants developers of namespace ns once
// the gateway is installed there: a Role with what `up` and `intercept`
// use (UpAccessChecks, InterceptAccessChecks) and the right the gateway
// reviews before it patches on their behalf (GatewayReviewedChecks: the
// custom verb "intercept" on the workload kinds, not update) bound to
// subjects, and a
// ClusterRole that lets them create identity CSRs — needed only by users
// whose kubeconfig has no bearer token (client certificates); creating one
// grants nothing, nobody signs them.
func DeveloperRBAC(ns string, subjects []rbacv1.Subject) []runtime.Object {
	meta := func(name, namespace string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{
			"app.kubernetes.io/part-of": "bridgetun", "app.kubernetes.io/managed-by": "bridgetun",
		}}
	}
	checks := UpAccessChecks(ns)
	for _, c := range append(InterceptAccessChecks(), GatewayReviewedChecks()...) {
		if !containsCheck(checks, c) {
			checks = append(checks, c)
		}
	}
	clusterBinding := DeveloperRoleName + "-" + ns
	return []runtime.Object{
		&rbacv1.Role{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
			ObjectMeta: meta(DeveloperRoleName, ns),
			Rules:      RulesFor(checks),
		},
		&rbacv1.RoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
			ObjectMeta: meta(DeveloperRoleName, ns),
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: DeveloperRoleName},
			Subjects:   subjects,
		},
		&rbacv1.ClusterRole{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
			ObjectMeta: meta(DeveloperRoleName, ""),
			Rules: []rbacv1.PolicyRule{{
				APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"certificatesigningrequests"}, Verbs: []string{"create"},
			}},
		},
		&rbacv1.ClusterRoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
			ObjectMeta: meta(clusterBinding, ""),
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: DeveloperRoleName},
			Subjects:   subjects,
		},
	}
}

// RulesFor turns access checks into the fewest RBAC rules that grant
// exactly them: one rule per API group and resource, verbs merged.
func RulesFor(checks []AccessCheck) []rbacv1.PolicyRule {
	type key struct{ group, resource string }
	var order []key
	verbs := map[key][]string{}
	for _, c := range checks {
		k := key{c.Group, c.Resource}
		if c.Subresource != "" {
			k.resource += "/" + c.Subresource
		}
		if _, ok := verbs[k]; !ok {
			order = append(order, k)
		}
		if !slices.Contains(verbs[k], c.Verb) {
			verbs[k] = append(verbs[k], c.Verb)
		}
	}
	rules := make([]rbacv1.PolicyRule, 0, len(order))
	for _, k := range order {
		rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{k.group}, Resources: []string{k.resource}, Verbs: verbs[k]})
	}
	return rules
}

// ObjectsYAML renders objects as one multi-document YAML stream.
func ObjectsYAML(objs []runtime.Object) ([]byte, error) {
	var buf bytes.Buffer
	for i, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			return nil, fmt.Errorf("render %T as YAML: %w", o, err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(b)
	}
	return buf.Bytes(), nil
}
