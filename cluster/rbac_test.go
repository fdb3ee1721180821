package cluster

import (
	"bytes"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

func TestParseSubject(t *testing.T) {
	for in, want := range map[string]rbacv1.Subject{
		"user:alice":                {Kind: "User", APIGroup: rbacv1.GroupName, Name: "alice"},
		"group:devs":                {Kind: "Group", APIGroup: rbacv1.GroupName, Name: "devs"},
		"serviceaccount:team:dev-a": {Kind: "ServiceAccount", Namespace: "team", Name: "dev-a"},
	} {
		if got, err := ParseSubject(in); err != nil || got != want {
			t.Errorf("%s: got %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "alice", "user:", "serviceaccount:team", "robot:x"} {
		if _, err := ParseSubject(bad); err == nil || !strings.Contains(err.Error(), "write user:NAME") {
			t.Errorf("%q: got %v, want the one-line usage", bad, err)
		}
	}
}

// TestDeveloperRBAC: the printed Role grants exactly what up and intercept
// check (each check appears once, nothing else: no Secrets of the gateway
// beyond reading the workload's env, no RBAC or install verbs), and the
// YAML decodes back.
func TestDeveloperRBAC(t *testing.T) {
	subj, _ := ParseSubject("serviceaccount:bt:dev-a")
	objs := DeveloperRBAC("bt", []rbacv1.Subject{subj})
	role := objs[0].(*rbacv1.Role)
	granted := map[AccessCheck]bool{}
	for _, r := range role.Rules {
		for _, res := range r.Resources {
			name, sub, _ := strings.Cut(res, "/")
			for _, v := range r.Verbs {
				granted[AccessCheck{Verb: v, Group: r.APIGroups[0], Resource: name, Subresource: sub}] = true
			}
		}
	}
	wanted := map[AccessCheck]bool{}
	for _, c := range append(append(UpAccessChecks("bt"), InterceptAccessChecks()...), GatewayReviewedChecks()...) {
		wanted[c] = true
	}
	// Rights that would let a developer run a pod as any ServiceAccount
	// of the namespace (the gateway's): the gateway writes workloads.
	for c := range granted {
		if c.Verb == "create" && c.Resource == "pods" && c.Subresource == "" ||
			c.Group == "apps" && (c.Verb == "update" || c.Verb == "patch" || c.Verb == "create") {
			t.Errorf("role grants %s %s: the gateway writes workloads and pods, developers must not", c.Verb, c)
		}
	}
	for c := range wanted {
		if !granted[c] {
			t.Errorf("role lacks %s %s", c.Verb, c)
		}
		delete(granted, c)
	}
	for c := range granted {
		t.Errorf("role grants %s %s, which neither up nor intercept checks", c.Verb, c)
	}
	for _, r := range role.Rules {
		for _, res := range r.Resources {
			if strings.HasPrefix(res, "roles") || strings.HasPrefix(res, "rolebindings") || res == "serviceaccounts" {
				t.Errorf("developer role grants install-level %s", res)
			}
		}
	}
	out, err := ObjectsYAML(objs)
	if err != nil {
		t.Fatal(err)
	}
	docs := bytes.Split(out, []byte("\n---\n"))
	if len(docs) != 4 {
		t.Fatalf("got %d documents, want Role, RoleBinding, ClusterRole, ClusterRoleBinding", len(docs))
	}
	for _, d := range docs {
		if _, _, err := Decoder().Decode(d, nil, nil); err != nil {
			t.Errorf("decode %q: %v", d, err)
		}
	}
}
