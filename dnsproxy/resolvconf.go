package dnsproxy

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// ReadResolvConf returns the nameservers (as "ip:53") and search domains
// of the resolv.conf at path. Call it before any OS configurator runs:
// afterwards the file names this proxy.
func ReadResolvConf(path string) (nameservers []string, search []string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read resolver config %q: %w", path, err)
	}
	ns, search, _ := parseResolvConf(b)
	return ns, search, nil
}

// parseResolvConf parses resolv.conf(5) text; options are returned as
// their raw lines so a rewrite can keep them.
func parseResolvConf(b []byte) (nameservers, search, options []string) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			ip, err := netip.ParseAddr(f[1])
			if err != nil {
				continue
			}
			nameservers = append(nameservers, netip.AddrPortFrom(ip.WithZone(""), 53).String())
		case "search", "domain": // the last of them wins, as in glibc
			search = nil
			for _, d := range f[1:] {
				search = append(search, strings.TrimSuffix(d, "."))
			}
		case "options":
			options = append(options, line)
		}
	}
	return nameservers, search, options
}
