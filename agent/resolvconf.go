package agent

import (
	"bufio"
	"os"
	"strings"
)

// ReadClusterDNS reads the pod's resolv.conf: the first nameserver is the
// cluster resolver and the "<ns>.svc.<domain>" search entry names the
// cluster domain. Missing values come back empty.
func ReadClusterDNS(path string) (server, domain string) {
	f, err := os.Open(path)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			if server == "" {
				server = fields[1]
			}
		case "search":
			for _, s := range fields[1:] {
				if _, after, ok := strings.Cut(s, ".svc."); ok && domain == "" && !strings.HasPrefix(s, "svc.") {
					domain = strings.TrimSuffix(after, ".")
				}
			}
		}
	}
	return server, domain
}
