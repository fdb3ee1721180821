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

// openSpec opens the listeners of one --forward spec.
func (fs *forwardSet) openSpec(ctx context.Context, spec string) error {
	network, addrSpec := "tcp", spec
	for _, n := range []string{"tcp", "udp"} {
		if rest, ok := strings.CutPrefix(spec, n+":"); ok {
			network, addrSpec = n, rest
		}
	}
	if local, remote, err := client.ParseForward(addrSpec); err == nil && isAddr(local) {
		f := Forward{Protocol: network, Local: local, Remote: remote}
		if err := fs.openExplicit(ctx, f); err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return fmt.Errorf("--forward %s: %s (%s) is already in use: pick another local port", spec, local, network)
			}
			return fmt.Errorf("--forward %s: %w", spec, err)
		}
		return nil
	}
	name, port, localPort, err := parseServiceForward(spec)
	if err != nil {
		return err
	}
	svc, err := fs.cfg.Client.CoreV1().Services(fs.cfg.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("--forward %s: service %q in %q: %w", spec, name, fs.cfg.Namespace, err)
	}
	if !hasClusterIP(svc) {
		return fmt.Errorf("--forward %s: service %q has no ClusterIP (headless): forward a pod address instead", spec, name)
	}
	fs.mu.Lock()
	fs.explicitSvc[name] = true
	ip := fs.addrFor(name)
	fs.mu.Unlock()
	matched := false
	for _, p := range svc.Spec.Ports {
		proto := protocolOf(p)
		if proto == "" || (port != "" && port != p.Name && port != strconv.Itoa(int(p.Port))) {
			continue
		}
		matched = true
		lp := int(p.Port)
		if localPort != 0 {
			lp = localPort
		}
		f := Forward{
			Service: name, Port: p.Port, Protocol: proto,
			Local:  net.JoinHostPort(ip.String(), strconv.Itoa(lp)),
			Remote: net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(p.Port))),
		}
		err := fs.openExplicit(ctx, f)
		switch {
		case errors.Is(err, syscall.EACCES):
			return fmt.Errorf("--forward %s: %w: ports below 1024 need root; add =LOCALPORT, e.g. %s:%d=%d", spec, err, name, p.Port, otherPort(lp))
		case errors.Is(err, syscall.EADDRINUSE):
			return fmt.Errorf("--forward %s: %s (%s) is already in use: pick another LOCALPORT, e.g. %s:%d=%d", spec, f.Local, proto, name, p.Port, otherPort(lp))
		case err != nil:
			return fmt.Errorf("--forward %s: %w", spec, err)
		}
	}
	if !matched {
		if port == "" {
			return fmt.Errorf("--forward %s: service %q has no TCP or UDP ports", spec, name)
		}
		return fmt.Errorf("--forward %s: service %q has no TCP or UDP port %q", spec, name, port)
	}
	return nil
}

// protocolOf returns "tcp" or "udp" for a Service port, "" for others (SCTP).
func protocolOf(p corev1.ServicePort) string {
	switch p.Protocol {
	case "", corev1.ProtocolTCP:
		return "tcp"
	case corev1.ProtocolUDP:
		return "udp"
	}
	return ""
}

// otherPort suggests a local port instead of p: 10000 up, or down when
// that leaves the port range.
func otherPort(p int) int {
	if p+lowPortOffset > 65535 {
		return p - lowPortOffset
	}
	return p + lowPortOffset
}

func hasClusterIP(svc *corev1.Service) bool {
	return svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone
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
		return "", "", 0, fmt.Errorf("--forward %q: want SVC[:PORT][=LOCALPORT] (a Service of the connected namespace) or [udp:]LOCAL=REMOTE addresses", spec)
	}
	if hasLocal {
		if localPort, err = strconv.Atoi(lp); err != nil || localPort < 1 || localPort > 65535 {
			return "", "", 0, fmt.Errorf("--forward %q: local port %q: want 1-65535", spec, lp)
		}
	}
	return name, port, localPort, nil
}
