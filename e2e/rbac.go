package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/bridgetun/bridgetun/cluster"
)

// LimitedKubeconfig makes a ServiceAccount name in ns allowed exactly the
// checks given (one Role rule each), and writes a kubeconfig for it into
// dir: the admin kubeconfig's server and CA with the account's token. The
// API server's own RBAC then decides, as it would for a real developer
// whose admin granted less than bridgetun needs. The returned func deletes
// the account, Role and RoleBinding.
func (c *Cluster) LimitedKubeconfig(ctx context.Context, ns, name, dir string, allow []cluster.AccessCheck) (string, func(), error) {
	var rules []rbacv1.PolicyRule
	for _, a := range allow {
		res := a.Resource
		if a.Subresource != "" {
			res += "/" + a.Subresource
		}
		rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{a.Group}, Resources: []string{res}, Verbs: []string{a.Verb}})
	}
	meta := metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"bridgetun.io/e2e": "limited-user"}}
	cleanup := func() {
		bg := context.Background()
		_ = c.Client.RbacV1().RoleBindings(ns).Delete(bg, name, metav1.DeleteOptions{})
		_ = c.Client.RbacV1().Roles(ns).Delete(bg, name, metav1.DeleteOptions{})
		_ = c.Client.CoreV1().ServiceAccounts(ns).Delete(bg, name, metav1.DeleteOptions{})
	}
	cleanup() // a leftover of an interrupted run
	create := func(err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			cleanup()
			return err
		}
		return nil
	}
	_, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: meta}, metav1.CreateOptions{})
	if err := create(err); err != nil {
		return "", nil, fmt.Errorf("create serviceaccount %s/%s: %w", ns, name, err)
	}
	_, err = c.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: meta, Rules: rules}, metav1.CreateOptions{})
	if err := create(err); err != nil {
		return "", nil, fmt.Errorf("create role %s/%s: %w", ns, name, err)
	}
	_, err = c.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: meta,
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}},
	}, metav1.CreateOptions{})
	if err := create(err); err != nil {
		return "", nil, fmt.Errorf("create rolebinding %s/%s: %w", ns, name, err)
	}
	path, err := c.tokenKubeconfig(ctx, ns, name, dir)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return path, cleanup, nil
}

// tokenKubeconfig writes a kubeconfig for ServiceAccount ns/name into dir:
// the admin kubeconfig's server and CA with a fresh token of the account.
func (c *Cluster) tokenKubeconfig(ctx context.Context, ns, name, dir string) (string, error) {
	hour := int64(3600)
	tok, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &hour}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for serviceaccount %s/%s: %w", ns, name, err)
	}
	admin, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", c.Kubeconfig, err)
	}
	cur := admin.Contexts[admin.CurrentContext]
	if cur == nil || admin.Clusters[cur.Cluster] == nil {
		return "", fmt.Errorf("%s: no current context with a cluster", c.Kubeconfig)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters[cur.Cluster] = admin.Clusters[cur.Cluster]
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	kc.Contexts[admin.CurrentContext] = &clientcmdapi.Context{Cluster: cur.Cluster, AuthInfo: name, Namespace: ns}
	kc.CurrentContext = admin.CurrentContext
	path := filepath.Join(dir, name+".kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// PrintedRBACKubeconfig makes ServiceAccount ns/name a developer exactly as
// an admin would: it applies what `bridgetun install --print-rbac -n ns
// --for serviceaccount:ns:name` prints (run from bin) and writes a token
// kubeconfig for the account into dir. The returned func deletes the
// account and what was applied.
func (c *Cluster) PrintedRBACKubeconfig(ctx context.Context, bin, ns, name, dir string) (string, func(), error) {
	out, err := exec.CommandContext(ctx, bin, "install", "--print-rbac", "-n", ns, "--for", "serviceaccount:"+ns+":"+name).Output()
	if err != nil {
		return "", nil, fmt.Errorf("bridgetun install --print-rbac: %w", err)
	}
	var objs []runtime.Object
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		o, _, err := cluster.Decoder().Decode(doc, nil, nil)
		if err != nil {
			return "", nil, fmt.Errorf("decode --print-rbac output: %w\n%s", err, doc)
		}
		objs = append(objs, o)
	}
	// Each account gets its own copy of the bindings, named after it.
	cleanup := func() {
		bg := context.Background()
		_ = c.Client.RbacV1().RoleBindings(ns).Delete(bg, name, metav1.DeleteOptions{})
		_ = c.Client.RbacV1().ClusterRoleBindings().Delete(bg, name, metav1.DeleteOptions{})
		_ = c.Client.CoreV1().ServiceAccounts(ns).Delete(bg, name, metav1.DeleteOptions{})
	}
	cleanup()
	if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"bridgetun.io/e2e": "developer"}},
	}, metav1.CreateOptions{}); err != nil {
		return "", nil, fmt.Errorf("create serviceaccount %s/%s: %w", ns, name, err)
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *rbacv1.Role:
			_ = c.Client.RbacV1().Roles(ns).Delete(ctx, o.Name, metav1.DeleteOptions{})
			_, err = c.Client.RbacV1().Roles(ns).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			o.Name = name
			_, err = c.Client.RbacV1().RoleBindings(ns).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_ = c.Client.RbacV1().ClusterRoles().Delete(ctx, o.Name, metav1.DeleteOptions{})
			_, err = c.Client.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			o.Name = name
			_, err = c.Client.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		default:
			err = fmt.Errorf("--print-rbac printed an unexpected %T", o)
		}
		if err != nil {
			cleanup()
			return "", nil, fmt.Errorf("apply --print-rbac output: %w", err)
		}
	}
	path, err := c.tokenKubeconfig(ctx, ns, name, dir)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return path, cleanup, nil
}
