package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/agent"
)

// policyHelp is the destination policy as `gateway --help` states it.
const policyHelp = `

Destination policy (--in-cluster). For a workstation the gateway dials only:
the cluster's pod and service CIDRs (--pod-cidr, --service-cidr: the installer
passes what it discovered, and every install or upgrade passes them again), the
--also-proxy ranges that workstation registered (for it alone), and its own DNS
on its tunnel address. It always refuses, whatever was registered: cloud
metadata addresses (AWS 169.254.169.254, fd00:ec2::254, ECS/EKS credential
agents; GCP fd20:ce::254; Azure 168.63.129.16; Alibaba 100.100.100.200; OCI
fd00:c1::a9fe:a9fe), the kubelet's ports 10250/10255 on its node ($HOST_IP,
the pod's status.hostIP) and on any address outside the pod and service CIDRs,
other workstations' tunnel addresses, loopback and link-local. It refuses the
API server (the kubernetes Service, $KUBERNETES_SERVICE_HOST:PORT, and
--api-server endpoints) unless the workstation ran ` + "`bridgetun up --allow-api-server`" + `.
A refused TCP connect gets an RST, a refused UDP datagram or ping an ICMP
destination unreachable (administratively prohibited), so clients fail at once;
refusals are counted in bridgetun_gateway_refused_total{reason}. Without
--pod-cidr and --service-cidr nothing of the cluster is dialled (only
--also-proxy ranges and DNS): a missing value closes, it never opens everything.
--config (standalone) applies no policy beyond the built-in local denials.`

// policyFlags are the destination policy's inputs.
type policyFlags struct {
	podCIDRs, serviceCIDRs, apiServers []string
	nodeIP                             string
}

func (f *policyFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&f.podCIDRs, "pod-cidr", nil, "the cluster's pod CIDR the gateway dials for workstations (repeatable; the installer passes it)")
	cmd.Flags().StringSliceVar(&f.serviceCIDRs, "service-cidr", nil, "the cluster's service CIDR the gateway dials for workstations (repeatable; the installer passes it)")
	cmd.Flags().StringSliceVar(&f.apiServers, "api-server", nil, "an API server endpoint ADDR:PORT refused unless a workstation allowed it (repeatable; the kubernetes Service from $KUBERNETES_SERVICE_HOST:PORT is always added)")
	cmd.Flags().StringVar(&f.nodeIP, "node-ip", os.Getenv("HOST_IP"), "the gateway's node, whose kubelet ports are refused (default $HOST_IP)")
}

// policy builds the destination policy from the flags and the pod's
// environment, and logs what it admits.
func (f *policyFlags) policy(log *slog.Logger) (*agent.Policy, error) {
	var cfg agent.PolicyConfig
	for _, c := range []struct {
		flag string
		in   []string
		out  *[]netip.Prefix
	}{{"--pod-cidr", f.podCIDRs, &cfg.PodCIDRs}, {"--service-cidr", f.serviceCIDRs, &cfg.ServiceCIDRs}} {
		for _, s := range c.in {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("%s %q: want a CIDR such as 10.96.0.0/12", c.flag, s)
			}
			*c.out = append(*c.out, p.Masked())
		}
	}
	apis := f.apiServers
	if h, p := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"); h != "" && p != "" {
		apis = append(apis, net.JoinHostPort(h, p))
	}
	for _, s := range apis {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return nil, fmt.Errorf("--api-server %q: want ADDR:PORT such as 10.96.0.1:443", s)
		}
		cfg.APIServer = append(cfg.APIServer, ap)
	}
	if f.nodeIP != "" {
		a, err := netip.ParseAddr(f.nodeIP)
		if err != nil {
			return nil, fmt.Errorf("--node-ip %q ($HOST_IP): want an IP address", f.nodeIP)
		}
		cfg.NodeIP = a
	}
	log.Info("destination policy", "pod_cidrs", cfg.PodCIDRs, "service_cidrs", cfg.ServiceCIDRs,
		"api_server", cfg.APIServer, "node_ip", cfg.NodeIP)
	if len(cfg.PodCIDRs) == 0 && len(cfg.ServiceCIDRs) == 0 {
		log.Warn("no --pod-cidr or --service-cidr: the gateway dials nothing of the cluster for workstations (only their --also-proxy ranges and DNS); reinstall it with `bridgetun install --upgrade`")
	}
	return agent.NewPolicy(cfg), nil
}
