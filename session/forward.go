package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridgetun/bridgetun/client"
)

// Forward is one local listener relaying into the cluster.
type Forward struct {
	Service string `json:"service,omitempty"` // "" for an address forward
	Port    int32  `json:"port,omitempty"`    // the Service port
	Local   string `json:"local"`
	Remote  string `json:"remote"`
}

// startForwards opens the --forward listeners. A spec is LOCAL=REMOTE
// (addresses), or SVC[:PORT][=LOCALPORT]: each Service gets its own
// loopback address (127.0.0.2, .3, ...) so ports never clash, and its
// Kubernetes-style variables point there (see RunEnv).
func (s *Session) startForwards(ctx context.Context) ([]Forward, error) {
	var out []Forward
	next := netip.MustParseAddr("127.0.0.2")
	byService := map[string]netip.Addr{}
	for _, spec := range s.cfg.Forwards {
		if local, remote, err := client.ParseForward(spec); err == nil && isAddr(local) {
			bound, err := s.client.Forward(ctx, local, remote, s.log)
			if err != nil {
				return nil, err
			}
			out = append(out, Forward{Local: bound.String(), Remote: remote})
			continue
		}
		name, port, localPort, err := parseServiceForward(spec)
		if err != nil {
			return nil, err
		}
		svc, err := s.conn.Client.CoreV1().Services(s.conn.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("--forward %s: service %q in %q: %w", spec, name, s.conn.Namespace, err)
		}
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			return nil, fmt.Errorf("--forward %s: service %q has no ClusterIP (headless): forward a pod address instead", spec, name)
		}
		ip, ok := byService[name]
		if !ok {
			ip, next = next, next.Next()
			byService[name] = ip
		}
		matched := false
		for _, p := range svc.Spec.Ports {
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
				continue // UDP forwards: not yet
			}
			if port != "" && port != p.Name && port != strconv.Itoa(int(p.Port)) {
				continue
			}
			matched = true
			lp := int(p.Port)
			if localPort != 0 {
				lp = localPort
			}
			remote := net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(p.Port)))
			bound, err := s.client.Forward(ctx, net.JoinHostPort(ip.String(), strconv.Itoa(lp)), remote, s.log)
			if errors.Is(err, syscall.EACCES) {
				return nil, fmt.Errorf("--forward %s: %w: ports below 1024 need root; add =LOCALPORT, e.g. %s=%d", spec, err, name, 10000+lp)
			}
			if err != nil {
				return nil, fmt.Errorf("--forward %s: %w (is the local port in use?)", spec, err)
			}
			out = append(out, Forward{Service: name, Port: p.Port, Local: bound.String(), Remote: remote})
		}
		if !matched {
			return nil, fmt.Errorf("--forward %s: service %q has no TCP port %q", spec, name, port)
		}
	}
	return out, nil
}

func isAddr(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	_, err = netip.ParseAddr(host)
	return err == nil || host == "localhost"
}

// parseServiceForward splits SVC[:PORT][=LOCALPORT].
func parseServiceForward(spec string) (name, port string, localPort int, err error) {
	left, lp, hasLocal := strings.Cut(spec, "=")
	name, port, _ = strings.Cut(left, ":")
	if name == "" || strings.ContainsAny(name, "./ ") {
		return "", "", 0, fmt.Errorf("--forward %q: want SVC[:PORT][=LOCALPORT] (a Service of the connected namespace) or LOCAL=REMOTE addresses", spec)
	}
	if hasLocal {
		if localPort, err = strconv.Atoi(lp); err != nil || localPort < 1 || localPort > 65535 {
			return "", "", 0, fmt.Errorf("--forward %q: local port %q: want 1-65535", spec, lp)
		}
	}
	return name, port, localPort, nil
}
