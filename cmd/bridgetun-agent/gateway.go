package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/agent"
	"github.com/bridgetun/bridgetun/internal/obs"
)

func newGatewayCmd() *cobra.Command {
	var configPath, metricsAddr, logLevel string
	cmd := &cobra.Command{
		Use:   "gateway --config FILE",
		Short: "Run the gateway: terminate workstation tunnels and forward their flows",
		Long: `Run the gateway. It terminates the WireGuard tunnels of workstations (over UDP
and/or the stream transport) and forwards every TCP/UDP flow and ICMP echo to the
real destination from this host, through a userspace network stack: no privileges.

The config file (JSON) names the key, tunnel address, listeners and peers:
  {"private_key": "<base64>", "address": "100.96.0.1", "udp_port": 51820,
   "stream_listen": "0.0.0.0:51821",
   "peers": [{"public_key": "<base64>", "allowed_ips": ["100.96.0.2/32"]}]}`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := obs.NewLogger(os.Stderr, logLevel)
			if err != nil {
				return err
			}
			f, err := agent.ReadGatewayFile(configPath)
			if err != nil {
				return err
			}
			key, err := f.Key()
			if err != nil {
				return fmt.Errorf("gateway config %s: %w", configPath, err)
			}
			addr, err := f.Addr()
			if err != nil {
				return fmt.Errorf("gateway config %s: %w", configPath, err)
			}
			peers, err := f.PeerConfigs()
			if err != nil {
				return fmt.Errorf("gateway config %s: %w", configPath, err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			reg := obs.NewRegistry()
			if metricsAddr != "" {
				bound, err := obs.ServeMetrics(ctx, metricsAddr, reg, log)
				if err != nil {
					return err
				}
				log.Info("metrics", "addr", bound.String())
			}
			cfg := agent.GatewayConfig{
				PrivateKey: key, Addr: addr, Peers: peers, MTU: f.MTU,
				UseUDP: f.UDPPort != 0, UDPPort: f.UDPPort,
				Log: log, Registerer: reg,
			}
			if f.StreamListen != "" {
				ln, err := net.Listen("tcp", f.StreamListen)
				if err != nil {
					return fmt.Errorf("stream_listen %s: %w", f.StreamListen, err)
				}
				cfg.StreamListener = ln
			}
			gw, err := agent.NewGateway(cfg)
			if err != nil {
				if cfg.StreamListener != nil {
					_ = cfg.StreamListener.Close()
				}
				return err
			}
			log.Info("ready", "public_key", key.PublicKey().String())
			<-ctx.Done()
			log.Info("shutting down")
			return gw.Close()
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "gateway config file (JSON; see above)")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics on this address (e.g. :9090); empty = off")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}
