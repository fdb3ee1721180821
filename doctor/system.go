package doctor

import (
	"bufio"
	"context"
	"net"
	"os"
	"strings"
)

// SystemOf is the real OS: its routes and rules where inspected
// (routes_linux.go), Go's resolver (the path programs built like this one
// take: /etc/resolv.conf and /etc/hosts), TCP dials.
func SystemOf() System {
	var d net.Dialer
	return System{
		Routes:  osRoutes,
		Rules:   osRules,
		RouteTo: osRouteTo,
		Resolve: func(ctx context.Context, name string) ([]string, error) {
			return net.DefaultResolver.LookupHost(ctx, name)
		},
		Nameservers: func() []string { return resolvConfNameservers("/etc/resolv.conf") },
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		},
		ProbeUDP:     osProbeUDP,
		InterfaceMTU: osInterfaceMTU,
	}
}

// resolvConfNameservers lists the nameserver lines of a resolv.conf.
func resolvConfNameservers(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) >= 2 && fields[0] == "nameserver" {
			out = append(out, fields[1])
		}
	}
	return out
}
