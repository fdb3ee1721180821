package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/bridgetun/bridgetun/agent"
	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/obs"
	"github.com/bridgetun/bridgetun/tunnel"
)

// In-cluster listeners. Control and stream bind loopback so only a
// Kubernetes port-forward (RBAC-checked by the API server) reaches them.
const (
	inClusterControl = "127.0.0.1:8081"
	inClusterStream  = "127.0.0.1:8082"
	inClusterUDPPort = 51820
	inClusterRelay   = ":8083" // api.RelayPort on the pod network, for sidecars (their pods' projected ServiceAccount tokens)
)

func newGatewayCmd() *cobra.Command {
	var (
		configPath, metricsAddr, logLevel string
		inCluster                         bool
		pf                                policyFlags
	)
	cmd := &cobra.Command{
		Use:   "gateway (--in-cluster | --config FILE)",
		Short: "Run the gateway: terminate workstation tunnels and forward their flows",
		Long: `Run the gateway. It terminates the WireGuard tunnels of workstations (over UDP
and/or the stream transport) and forwards every TCP/UDP flow and ICMP echo to the
real destination from this host, through a userspace network stack: no privileges.

--in-cluster is how bridgetun installs it: the key comes from $BRIDGETUN_PRIVATE_KEY,
the control API listens on ` + inClusterControl + ` and the stream transport on ` + inClusterStream + `
(both reached only through port-forward), WireGuard UDP on :51820, and the
cluster resolver is read from /etc/resolv.conf.

--config runs it standalone (tests, experiments); the file (JSON) names the key,
tunnel address, listeners and static peers:
  {"private_key": "<base64>", "address": "100.96.0.1", "udp_port": 51820,
   "stream_listen": "0.0.0.0:51821",
   "peers": [{"public_key": "<base64>", "allowed_ips": ["100.96.0.2/32"]}]}` + policyHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if inCluster == (configPath != "") {
				return errors.New("gateway: pass exactly one of --in-cluster and --config FILE")
			}
			log, err := obs.NewLogger(os.Stderr, logLevel)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			reg := obs.NewRegistry()
			// Ready once every listener is open: the pod's readiness probe
			// (/healthz) must not let a client in before the control API.
			var ready atomic.Bool
			if metricsAddr != "" {
				bound, err := obs.ServeMetrics(ctx, metricsAddr, reg, log, ready.Load)
				if err != nil {
					return err
				}
				log.Info("metrics", "addr", bound.String())
			}
			if inCluster {
				return runInCluster(ctx, log, reg, &ready, &pf)
			}
			return runFromFile(ctx, configPath, log, reg, &ready)
		},
	}
	cmd.Flags().BoolVar(&inCluster, "in-cluster", false, "run as the in-cluster gateway (key from $BRIDGETUN_PRIVATE_KEY)")
	cmd.Flags().StringVar(&configPath, "config", "", "standalone: gateway config file (JSON; see above)")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics and /healthz on this address (e.g. :9090); empty = off")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	pf.add(cmd)
	return cmd
}

func runFromFile(ctx context.Context, path string, log *slog.Logger, reg *prometheus.Registry, ready *atomic.Bool) error {
	f, err := agent.ReadGatewayFile(path)
	if err != nil {
		return err
	}
	key, err := f.Key()
	if err != nil {
		return fmt.Errorf("gateway config %s: %w", path, err)
	}
	addr, err := f.Addr()
	if err != nil {
		return fmt.Errorf("gateway config %s: %w", path, err)
	}
	peers, err := f.PeerConfigs()
	if err != nil {
		return fmt.Errorf("gateway config %s: %w", path, err)
	}
	cfg := agent.GatewayConfig{
		PrivateKey: key, Addr: addr, Peers: peers, MTU: f.MTU,
		UseUDP: f.UDPPort != 0, UDPPort: f.UDPPort,
		Log: log, Registerer: reg,
	}
	gw, err := startGateway(cfg, f.StreamListen)
	if err != nil {
		return err
	}
	ready.Store(true)
	log.Info("ready", "public_key", key.PublicKey().String())
	<-ctx.Done()
	log.Info("shutting down")
	return gw.Close()
}

func runInCluster(ctx context.Context, log *slog.Logger, reg *prometheus.Registry, ready *atomic.Bool, pf *policyFlags) error {
	policy, err := pf.policy(log)
	if err != nil {
		return err
	}
	key, err := gatewayKey(os.Getenv("BRIDGETUN_PRIVATE_KEY"))
	if err != nil {
		return err
	}
	dns, domain := agent.ReadClusterDNS("/etc/resolv.conf")
	dnsAddr, _ := netip.ParseAddr(dns) // invalid = no DNS on the tunnel address
	holders := agent.NewHolders(reg)
	intercepts := agent.NewIntercepts(0, nil)
	gw, err := startGateway(agent.GatewayConfig{
		ClusterDNS: dnsAddr,
		PrivateKey: key, Addr: api.GatewayTunnelAddr,
		UseUDP: true, UDPPort: inClusterUDPPort,
		// Large enough for stream-transport clients; TCP's MSS negotiation
		// keeps UDP clients at their own 1420.
		MTU: tunnel.StreamMTU,
		// Loopback is denied by the stack already; the control and stream
		// ports are named here too so no peer can reach them through us.
		Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Log:  log, Registerer: reg, Policy: policy, Holders: holders, Traces: intercepts.Traces(),
	}, inClusterStream)
	if err != nil {
		return err
	}
	defer gw.Close()
	ns := os.Getenv("POD_NAMESPACE")
	restorer, err := newRestorer(ns)
	if err != nil {
		return err
	}
	verify := newClusterAuth(restorer.client)
	ctl := agent.NewControl(agent.ControlConfig{
		Gateway: gw, GatewayKey: key, ClusterDNS: dns, ClusterDomain: domain,
		Namespace: ns, Log: log, Registerer: reg, Intercepts: intercepts, Policy: policy,
		Auth: verify, Authz: verify, Holders: holders,
		Workloads: patcher{gp: &cluster.GatewayPatcher{Client: restorer.client, Namespace: ns}},
	})
	ln, err := net.Listen("tcp", inClusterControl)
	if err != nil {
		return fmt.Errorf("control API listen %s: %w", inClusterControl, err)
	}
	relayLn, err := net.Listen("tcp", inClusterRelay)
	if err != nil {
		ln.Close()
		return fmt.Errorf("relay listen %s: %w", inClusterRelay, err)
	}
	relay := agent.NewRelay(agent.RelayConfig{
		Intercepts: intercepts, Auth: verify, Pods: sidecarPods{client: restorer.client, ns: ns},
		Dial: gw.Stack().DialContext, Registerer: reg, Log: log, Holders: holders,
	})
	ready.Store(true)
	log.Info("ready", "public_key", key.PublicKey().String(), "cluster_dns", dns, "cluster_domain", domain)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return ctl.Run(gctx, ln) })
	g.Go(func() error { return relay.Run(gctx, relayLn) })
	g.Go(func() error {
		agent.RunOrphanRestorer(gctx, agent.OrphanConfig{Intercepts: intercepts, Restorer: restorer, Log: log})
		return nil
	})
	err = g.Wait()
	log.Info("shutting down")
	return errors.Join(err, gw.Close())
}

// gatewayKey is the gateway's WireGuard key: made fresh at each start and
// kept only in memory, so no Secret holds it for anyone with `get secrets`
// in the namespace to read (workstations learn the public key from the
// control API and follow a change when they register again). A key in
// $BRIDGETUN_PRIVATE_KEY (an older install's Secret) is still used.
func gatewayKey(env string) (tunnel.Key, error) {
	if env == "" {
		k, err := tunnel.GenerateKey()
		if err != nil {
			return tunnel.Key{}, fmt.Errorf("generate the gateway key: %w", err)
		}
		return k, nil
	}
	k, err := tunnel.ParseKey(env)
	if err != nil {
		return tunnel.Key{}, fmt.Errorf("$BRIDGETUN_PRIVATE_KEY: %w (an older install's gateway Secret is damaged: run `bridgetun install --upgrade`)", err)
	}
	return k, nil
}

// startGateway opens the stream listener (if any) and starts the gateway.
func startGateway(cfg agent.GatewayConfig, streamListen string) (*agent.Gateway, error) {
	if streamListen != "" {
		ln, err := net.Listen("tcp", streamListen)
		if err != nil {
			return nil, fmt.Errorf("stream listener %s: %w", streamListen, err)
		}
		cfg.StreamListener = ln
	}
	gw, err := agent.NewGateway(cfg)
	if err != nil && cfg.StreamListener != nil {
		_ = cfg.StreamListener.Close()
	}
	return gw, err
}
