package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/agent/sidecar"
	"github.com/bridgetun/bridgetun/internal/obs"
)

// defaultTokenFile is where the patched pod mounts its projected
// ServiceAccount token for the relay (cluster.RelayTokenPath).
const defaultTokenFile = "/var/run/secrets/bridgetun.io/relay/token"

func newSidecarCmd() *cobra.Command {
	var (
		listen, probeListen, original, gateway string
		namespace, service, tokenFile          string
		metricsAddr, logLevel                  string
		dialTimeout, drain                     time.Duration
	)
	cmd := &cobra.Command{
		Use:   "sidecar --original ADDR --gateway HOST:PORT --namespace NS --service SVC",
		Short: "Run the intercept sidecar next to a Service's container",
		Long: `Run the intercept sidecar. It runs in the target pod, next to the original
container, and receives the intercepted container port's inbound TCP (redirected to
--listen by the rules "bridgetun-agent init" installs). It follows the Service's
routes at the gateway and, per connection:

  full intercept       relays the connection to the workstation through the gateway
  isolated intercepts  proxies HTTP/1.x and h2c request by request: a request whose
                       ` + api.RouteAsHeader + ` header names a route goes to that
                       workstation, the rest to the original; responses carry
                       ` + api.ServedByHeader + `: local or cluster
  no intercept         passes the connection to the original (--original)

A workstation that cannot be reached within --dial-timeout is skipped: the traffic
goes to the original, so an intercept never takes the Service down. Connections to
--probe-listen (the kubelet's rewritten probes) always go to the original.

The sidecar authenticates to the gateway with its pod's projected ServiceAccount
token for audience "` + api.RelayTokenAudience + `" (--token-file), read for every request: the
kubelet rotates it, and the gateway serves this pod only its own Service's routes.`,
		Example: `  bridgetun-agent sidecar --listen :15001 --probe-listen :15002 \
    --original 127.0.0.1:8080 --gateway bridgetun-relay.bridgetun:8083 \
    --namespace shop --service web --metrics-addr :15090`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			token := sidecar.TokenFile(tokenFile)
			if _, err := token(); err != nil {
				return fmt.Errorf("sidecar: --token-file: %w", err)
			}
			log, err := obs.NewLogger(os.Stderr, logLevel)
			if err != nil {
				return err
			}
			ctx, stop := drainOnSignal(cmd.Context(), drain, log)
			defer stop()

			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			var probe net.Listener
			if probeListen != "" {
				if probe, err = net.Listen("tcp", probeListen); err != nil {
					_ = ln.Close()
					return fmt.Errorf("--probe-listen %s: %w", probeListen, err)
				}
			}
			reg := obs.NewRegistry()
			gc := sidecar.NewGatewayClient(sidecar.GatewayClientConfig{Addr: gateway, Token: token, Log: log})
			var routes sidecar.RouteState
			sc, err := sidecar.New(sidecar.Config{
				Listener: ln, ProbeListener: probe, Original: original,
				Routes: &routes, Dial: gc.Dial, DialTimeout: dialTimeout,
				Log: log, Registerer: reg, Sightings: gc.Sightings(namespace, service),
			})
			if err != nil {
				_ = ln.Close()
				if probe != nil {
					_ = probe.Close()
				}
				return err
			}
			// Ready once listening: with no routes the sidecar passes
			// everything through, so it never holds the pod back.
			var ready atomic.Bool
			if metricsAddr != "" {
				bound, err := obs.ServeMetrics(ctx, metricsAddr, reg, log, ready.Load)
				if err != nil {
					_ = ln.Close()
					if probe != nil {
						_ = probe.Close()
					}
					return err
				}
				log.Info("metrics", "addr", bound.String())
			}
			g, gctx := errgroup.WithContext(ctx)
			g.Go(func() error { return sc.Run(gctx) })
			g.Go(func() error { return gc.WatchRoutes(gctx, namespace, service, routes.Set) })
			ready.Store(true)
			log.Info("ready", "listen", ln.Addr().String(), "original", original, "gateway", gateway, "namespace", namespace, "service", service)
			err = g.Wait()
			log.Info("shut down")
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", ":15001", "where the redirected connections arrive (the init step's --sidecar-port)")
	f.StringVar(&probeListen, "probe-listen", "", "where rewritten kubelet probes arrive, always passed to --original (e.g. :15002); empty = none")
	f.StringVar(&original, "original", "", "the original container's port on loopback, e.g. 127.0.0.1:8080")
	f.StringVar(&gateway, "gateway", "", fmt.Sprintf("the gateway's relay, HOST:PORT (its port is %d)", api.RelayPort))
	f.StringVar(&namespace, "namespace", "", "namespace of the intercepted Service")
	f.StringVar(&service, "service", "", "name of the intercepted Service")
	f.StringVar(&tokenFile, "token-file", defaultTokenFile, "the pod's projected ServiceAccount token for the gateway relay (audience "+api.RelayTokenAudience+")")
	f.DurationVar(&drain, "drain", 3*time.Second, "on SIGTERM keep serving this long before exiting: the pod's endpoints take a moment to drop it everywhere, and the app may still be draining")
	f.DurationVar(&dialTimeout, "dial-timeout", 2*time.Second, "give up on a workstation not reached within this and pass the traffic to --original")
	f.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics and /healthz on this address (e.g. :15090); empty = off")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	for _, name := range []string{"original", "gateway", "namespace", "service"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// drainOnSignal returns a context that ends drain after the first SIGTERM
// or SIGINT (a second signal ends it at once): a terminating pod still gets
// connections until every node has dropped it from the Service, and the
// sidecar must keep passing them to the app meanwhile.
func drainOnSignal(parent context.Context, drain time.Duration, log *slog.Logger) (context.Context, func()) {
	ctx, cancel := context.WithCancel(parent)
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case <-ctx.Done():
			return
		case s := <-sig:
			log.Info("terminating: still serving while the pod drains", "signal", s.String(), "drain", drain)
		}
		select {
		case <-ctx.Done():
		case <-time.After(drain):
		case <-sig:
		}
		cancel()
	}()
	return ctx, func() { signal.Stop(sig); cancel() }
}
