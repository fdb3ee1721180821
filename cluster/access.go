package cluster

import (
	"context"
	"fmt"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bridgetun/bridgetun/agent/api"
)

// AccessCheck is one permission: Verb on Group/Resource[/Subresource].
type AccessCheck struct{ Verb, Group, Resource, Subresource string }

// String renders the check's resource the way kubectl names it:
// "pods/portforward", "deployments.apps".
func (a AccessCheck) String() string {
	r := a.Resource
	if a.Group != "" {
		r += "." + a.Group
	}
	if a.Subresource != "" {
		r += "/" + a.Subresource
	}
	return r
}

// AccessError lists the permissions a user lacks in one namespace.
type AccessError struct {
	Namespace string
	Missing   []AccessCheck
}

func (e *AccessError) Error() string {
	parts := make([]string, len(e.Missing))
	for i, m := range e.Missing {
		parts[i] = fmt.Sprintf("%q on %q", m.Verb, m.String())
	}
	where := fmt.Sprintf("in namespace %q", e.Namespace)
	if e.Namespace == "" {
		where = "cluster-wide"
	}
	return fmt.Sprintf("forbidden: you need %s %s (ask your cluster admin for the bridgetun role)",
		strings.Join(parts, ", "), where)
}

// CheckAccess asks the API server (SelfSubjectAccessReview) whether the
// current user may do each check in ns, and returns an *AccessError listing
// every missing permission. Conn.CheckAccess adds the context's name.
func CheckAccess(ctx context.Context, client kubernetes.Interface, ns string, checks []AccessCheck) error {
	var missing []AccessCheck
	for _, c := range checks {
		review := &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Namespace:   ns,
					Verb:        c.Verb,
					Group:       c.Group,
					Resource:    c.Resource,
					Subresource: c.Subresource,
				},
			},
		}
		got, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("check access %q on %q in namespace %q: %w", c.Verb, c.String(), ns, err)
		}
		if !got.Status.Allowed {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return &AccessError{Namespace: ns, Missing: missing}
	}
	return nil
}

// UpAccessChecks lists what `bridgetun up` needs in the gateway namespace
// ns once the gateway is installed (pass ns to CheckAccess; the checks
// themselves are namespace-free): find the gateway and its pod, follow a
// replaced pod, port-forward to it, and read Services and EndpointSlices
// for split DNS and the forwards. It never reads the gateway's Secret: the
// control API names the gateway's public key.
func UpAccessChecks(ns string) []AccessCheck {
	return []AccessCheck{
		{Verb: "create", Resource: "pods", Subresource: "portforward"},
		{Verb: "get", Resource: "pods"},
		{Verb: "list", Resource: "pods"},
		{Verb: "watch", Resource: "pods"},
		{Verb: "get", Group: "apps", Resource: "deployments"},
		{Verb: "list", Group: "apps", Resource: "replicasets"},
		{Verb: "get", Resource: "services"},
		{Verb: "list", Resource: "services"},
		{Verb: "watch", Resource: "services"},
		{Verb: "list", Group: "discovery.k8s.io", Resource: "endpointslices"},
	}
}

// InstallAccessChecks lists what installing or upgrading the gateway in
// ns needs beyond UpAccessChecks: create or update its objects. The
// gateway Role's own rules are included because Kubernetes lets a user
// bind a Role only when the user holds its permissions (RBAC escalation
// check); the cluster-scoped part is InstallClusterAccessChecks.
func InstallAccessChecks(ns string) []AccessCheck {
	checks := UpAccessChecks(ns)
	for _, r := range []struct{ group, resource string }{
		{"apps", "deployments"},
		{"", "serviceaccounts"},
		{"rbac.authorization.k8s.io", "roles"},
		{"rbac.authorization.k8s.io", "rolebindings"},
		{"", "services"},
	} {
		for _, verb := range []string{"get", "create", "update"} {
			if c := (AccessCheck{Verb: verb, Group: r.group, Resource: r.resource}); !containsCheck(checks, c) {
				checks = append(checks, c)
			}
		}
	}
	return appendRuleChecks(checks, gatewayRoleRules())
}

// InstallClusterAccessChecks lists the cluster-scoped permissions an
// install needs (check them with namespace ""): the gateway's ClusterRole
// and its binding, and the rules of that role (escalation check).
func InstallClusterAccessChecks() []AccessCheck {
	var checks []AccessCheck
	for _, res := range []string{"clusterroles", "clusterrolebindings"} {
		for _, verb := range []string{"get", "create", "update"} {
			checks = append(checks, AccessCheck{Verb: verb, Group: "rbac.authorization.k8s.io", Resource: res})
		}
	}
	return appendRuleChecks(checks, gatewayClusterRules())
}

func appendRuleChecks(checks []AccessCheck, rules []rbacv1.PolicyRule) []AccessCheck {
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					c := AccessCheck{Verb: v, Group: g, Resource: res}
					if !containsCheck(checks, c) {
						checks = append(checks, c)
					}
				}
			}
		}
	}
	return checks
}

// InterceptAccessChecks lists what `bridgetun intercept` itself needs in
// ns: find the workload behind a Service, wait for its rollout, read the
// pod's ConfigMaps and Secrets for its environment and volumes. Writing
// the workload is the gateway's: it patches and restores with its own
// ServiceAccount after a SubjectAccessReview of the caller's
// GatewayReviewedChecks, and creates or deletes pods itself (the patch's
// dry run, a bare ReplicaSet's roll). So a developer's Role has no
// `create pods` or `update deployments`, with either of which its holder
// could run a pod as any ServiceAccount of the namespace, the gateway's
// included.
func InterceptAccessChecks() []AccessCheck {
	checks := []AccessCheck{
		{Verb: "get", Resource: "services"},
		{Verb: "list", Resource: "pods"},
		{Verb: "get", Resource: "configmaps"},
		{Verb: "get", Resource: "secrets"},
	}
	for _, res := range workloadResources {
		for _, verb := range []string{"get", "list"} {
			checks = append(checks, AccessCheck{Verb: verb, Group: "apps", Resource: res})
		}
	}
	return checks
}

// workloadResources are the workload kinds' resources, in a fixed order.
var workloadResources = []string{"deployments", "statefulsets", "replicasets"}

// GatewayReviewedChecks is the right the gateway reviews before it
// patches a workload on a caller's behalf: the custom verb
// api.InterceptVerb on the workload kinds (the gateway also accepts
// "update", e.g. the built-in edit role; --force needs update).
func GatewayReviewedChecks() []AccessCheck {
	var checks []AccessCheck
	for _, res := range workloadResources {
		checks = append(checks, AccessCheck{Verb: api.InterceptVerb, Group: "apps", Resource: res})
	}
	return checks
}

// UninstallAccessChecks lists what `bridgetun uninstall` needs in ns.
func UninstallAccessChecks(ns string) []AccessCheck {
	return []AccessCheck{
		{Verb: "delete", Group: "apps", Resource: "deployments"},
		{Verb: "delete", Resource: "secrets"},
		{Verb: "delete", Resource: "serviceaccounts"},
		{Verb: "delete", Group: "rbac.authorization.k8s.io", Resource: "roles"},
		{Verb: "delete", Group: "rbac.authorization.k8s.io", Resource: "rolebindings"},
		{Verb: "delete", Resource: "services"},
	}
}

func containsCheck(cs []AccessCheck, c AccessCheck) bool {
	for _, x := range cs {
		if x == c {
			return true
		}
	}
	return false
}
