package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/client/gvisorstack"
	"github.com/bridgetun/bridgetun/internal/obs"
	"github.com/bridgetun/bridgetun/tunnel"
)

func newConnectCmd() *cobra.Command {
	var (
		configPath, metricsAddr, logLevel string
		netstackMode, allowConflicts      bool
		forwards                          []string
	)
	cmd := &cobra.Command{
		Use:   "connect --config FILE",
		Short: "Join a gateway from a static config file (no Kubernetes; for tests and experiments)",
		Long: `Join a bridgetun gateway directly, with keys and addresses from a config file
instead of from the cluster. TUN mode (default) needs root and routes the
config's prefixes through a kernel TUN device; --netstack needs no privileges
and reaches the tunnel through local TCP forwards (--forward).

Config file (JSON):
  {"private_key": "<base64>", "address": "100.96.0.2/32",
   "gateway_public_key": "<base64>", "transport": "udp",
   "gateway_endpoint": "10.0.0.1:51820", "routes": ["10.96.0.0/16"]}`,
		Example: `  sudo bridgetun connect --config client.json
  bridgetun connect --config client.json --netstack --forward 127.0.0.1:8080=10.96.0.20:80`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := obs.NewLogger(os.Stderr, logLevel)
			if err != nil {
				return err
			}
			cfg, _, err := client.ReadFile(configPath)
			if err != nil {
				return err
			}
			cfg.Mode, cfg.AllowConflicts, cfg.Log = client.ModeTUN, allowConflicts, log
			if netstackMode {
				cfg.Mode, cfg.NewStack = client.ModeNetstack, gvisorstack.New
			} else if len(forwards) > 0 {
				return errors.New("--forward needs --netstack (in TUN mode, dial the destination directly)")
			} else if err := tunnel.TUNSupported(); err != nil {
				return err
			} else if os.Geteuid() != 0 {
				return errors.New("TUN mode needs root: run with sudo, or use --netstack")
			}
			if cfg.Transport == client.TransportStream {
				endpoint := cfg.GatewayEndpoint
				cfg.StreamDial = func(ctx context.Context) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "tcp", endpoint)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			reg := obs.NewRegistry()
			cfg.Registerer = reg
			if metricsAddr != "" {
				if _, err := obs.ServeMetrics(ctx, metricsAddr, reg, log, nil); err != nil {
					return err
				}
			}
			client.TuneGC()
			start := time.Now()
			c, err := client.Start(cfg)
			if err != nil {
				return err
			}
			defer c.Close()
			for _, spec := range forwards {
				local, remote, err := client.ParseForward(spec)
				if err != nil {
					return err
				}
				if _, err := c.Forward(ctx, local, remote, log); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "connected (%s, %s) in %d ms; Ctrl-C to disconnect\n",
				cfg.Mode, cfg.Transport, time.Since(start).Milliseconds())
			<-ctx.Done()
			return c.Close()
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "client config file (JSON; see above)")
	cmd.Flags().BoolVar(&netstackMode, "netstack", false, "use a userspace network stack instead of a TUN device (no root)")
	cmd.Flags().BoolVar(&allowConflicts, "allow-conflicts", false, "route prefixes even where they overlap existing routes")
	cmd.Flags().StringArrayVar(&forwards, "forward", nil, "netstack mode: LOCAL=REMOTE TCP forward, e.g. 127.0.0.1:8080=10.96.0.20:80 (repeatable)")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics on this address; empty = off")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}
