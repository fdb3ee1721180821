package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Path MTU through the tunnel. A WireGuard packet is the inner packet plus
// 60 bytes (IPv4, UDP, WireGuard), so a link on the way with a smaller MTU
// that also filters ICMP "fragmentation needed" drops exactly the
// full-size packets: handshakes and small requests work, bulk transfers
// hang. The probe asks the cluster's DNS (through the tunnel) the same
// question twice, small and padded (EDNS0 padding, RFC 7830) so the IP
// packet is the TUN's MTU exactly, sent with the don't-fragment bit. A
// small answer and no big one is the black hole.

const (
	ipv4UDPHeader = 28
	probeTries    = 3
)

// padTo returns a DNS query for name whose wire form is size bytes (at
// least its unpadded size).
func padTo(name string, size int) ([]byte, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	m.SetEdns0(4096, false)
	opt := m.IsEdns0()
	pad := &dns.EDNS0_PADDING{}
	opt.Option = append(opt.Option, pad)
	base, err := m.Pack() // with an empty padding option (4 bytes)
	if err != nil {
		return nil, err
	}
	if n := size - len(base); n > 0 {
		pad.Padding = make([]byte, n)
	}
	return m.Pack()
}

func checkMTU(ctx context.Context, in Inputs) Verdict {
	st := in.Status
	if st == nil {
		return skipNoSession("mtu")
	}
	v := Verdict{Check: "mtu"}
	if st.Mode != "tun" || st.TUN == "" {
		v.Status, v.Detail = Skip, "probed in TUN mode only (a netstack session's packets never leave this process unwrapped)"
		return v
	}
	if in.System.ProbeUDP == nil || in.System.InterfaceMTU == nil {
		v.Status, v.Detail = Skip, "not inspected on this OS"
		return v
	}
	mtu, err := in.System.InterfaceMTU(st.TUN)
	if err != nil {
		v.Status, v.Detail = Warn, fmt.Sprintf("MTU of %s: %v", st.TUN, err)
		return v
	}
	server := net.JoinHostPort(st.ClusterDNS, "53")
	name := "kubernetes.default.svc." + st.ClusterDomain
	probe := func(size int) error {
		q, err := padTo(name, size-ipv4UDPHeader)
		if err != nil {
			return err
		}
		var last error
		for range probeTries {
			pctx, cancel := context.WithTimeout(ctx, in.Timeout/probeTries)
			reply, err := in.System.ProbeUDP(pctx, server, q)
			cancel()
			if err == nil {
				var m dns.Msg
				if err = m.Unpack(reply); err == nil {
					return nil
				}
			}
			last = err
		}
		return last
	}
	if err := probe(128); err != nil {
		v.Status, v.Detail = Warn, fmt.Sprintf("DNS through the tunnel (%s) did not answer a small query: %v", server, err)
		v.Fix = "see the transport and dns-cluster checks first"
		return v
	}
	start := time.Now()
	err = probe(mtu)
	switch {
	case err == nil:
		v.Status, v.Detail = OK, fmt.Sprintf("full-size packets (%d bytes, don't fragment) cross the tunnel (%s transport) and are answered in %s", mtu, st.Transport, time.Since(start).Round(time.Microsecond))
	case errors.Is(err, errMsgSize):
		v.Status, v.Detail = Warn, fmt.Sprintf("this host refused to send %d bytes on %s: %v", mtu, st.TUN, err)
	default:
		v.Status = Fail
		v.Detail = fmt.Sprintf("small packets cross the tunnel but %d-byte ones are lost (%s transport): a path-MTU black hole between here and the gateway: %v", mtu, st.Transport, err)
		fix := fmt.Sprintf("start again with a smaller inner MTU: `bridgetun down` and `sudo bridgetun up --mtu %d`", max(1280, mtu-80))
		if strings.EqualFold(st.Transport, "udp") {
			fix += ", or `--transport stream` (no path MTU applies to it)"
		}
		v.Fix = fix
	}
	return v
}

// errMsgSize marks a probe the local stack refused as too large.
var errMsgSize = errors.New("message too long for the interface")
