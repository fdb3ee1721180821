package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/session"
)

func newStatusCmd() *cobra.Command {
	var asJSON, diagnostics bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running session: transport, tunnel address, handshake, routes, traffic",
		Long: `Show the running session: transport, tunnel address, handshake, routes,
traffic, forwards and intercepts.

Exit codes: 0 when a session answered; 1 when none is up or it could not be
asked (the reason on stderr). With --json, no session up is not an error:
it prints {"state": "down"} and exits 0, so scripts can test .state.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			st, err := session.NewClient(session.DefaultPaths().Socket).Status(ctx)
			w := cmd.OutOrStdout()
			if asJSON && errors.Is(err, session.ErrNotRunning) {
				return printJSON(w, stateResult{State: "down"})
			}
			if err != nil {
				return err
			}
			st.ProxyAuth = nil // the proxies' credentials are for run, never printed
			if asJSON {
				return printJSON(w, st)
			}
			hs := "never"
			if !st.LastHandshake.IsZero() {
				hs = fmt.Sprintf("%.0fs ago", st.HandshakeAgeSec)
			}
			fmt.Fprintf(w, "state:      %s (pid %d, up since %s)\n", st.State, st.PID, st.Since.Format(time.TimeOnly))
			fmt.Fprintf(w, "cluster:    context %q, namespace %q\n", st.Context, st.Namespace)
			fmt.Fprintf(w, "gateway:    %s/%s, version %s (client %s)\n", st.GatewayNamespace, st.GatewayPod, st.GatewayVersion, st.ClientVersion)
			dev := st.Mode
			if st.TUN != "" {
				dev += " " + st.TUN
			}
			tr := st.Transport
			if st.TransportMode == "auto" {
				tr = fmt.Sprintf("%s (auto, %d switches)", st.Transport, st.TransportSwitch)
			}
			fmt.Fprintf(w, "tunnel:     %s over %s, address %s, handshake %s, reconnects %d\n", dev, tr, st.TunnelAddress, hs, st.Reconnects)
			fmt.Fprintf(w, "traffic:    %d bytes in, %d bytes out\n", st.RxBytes, st.TxBytes)
			fmt.Fprintf(w, "routes:     %s\n", strings.Join(st.Routes, " "))
			fmt.Fprintf(w, "dns:        %s, resolver %s, cluster domain %s\n", st.DNSMode, st.DNSListen, st.ClusterDomain)
			if st.SOCKSProxy != "" || st.HTTPProxy != "" {
				fmt.Fprintf(w, "proxies:    SOCKS5 %s, HTTP %s\n", st.SOCKSProxy, st.HTTPProxy)
			}
			for _, f := range st.Forwards {
				fmt.Fprintf(w, "forward:    %s\n", f)
			}
			for _, it := range st.Intercepts {
				printIntercept(w, it)
			}
			if diagnostics {
				printDiagnostics(ctx, w, st)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&diagnostics, "diagnostics", false, "also show DNS upstreams and routing, the environment `run` gives, and sample resolutions")
	return cmd
}

// printIntercept prints one intercept and its real state: active,
// reconnecting since when and why, or lost and why.
func printIntercept(w io.Writer, it session.InterceptInfo) {
	route := "all traffic"
	if it.RouteAs != "" {
		route = "kubernetes-route-as: " + it.RouteAs
	}
	grace := ""
	if it.Grace > 0 {
		grace = ", grace " + shortDuration(it.Grace)
	}
	fmt.Fprintf(w, "intercept:  %s (%s, port %d) → 127.0.0.1:%d, %s, since %s%s\n", it.Service, it.Workload, it.ContainerPort, it.LocalPort, route, it.Since.Format(time.TimeOnly), grace)
	fmt.Fprintf(w, "            %s\n", interceptState(it))
	if it.LocalURL != "" && it.State != session.InterceptLost {
		fmt.Fprintf(w, "            local URL %s\n", it.LocalURL)
	}
}

// interceptState is "active", "reconnecting since 15:04:05 (why)" or
// "lost: why".
func interceptState(it session.InterceptInfo) string {
	switch it.State {
	case session.InterceptReconnecting:
		s := "reconnecting since " + it.StateSince.Local().Format(time.TimeOnly)
		if it.StateReason != "" {
			s += " (" + it.StateReason + ")"
		}
		return s
	case session.InterceptLost:
		return "lost: " + it.StateReason
	case "", session.InterceptActive: // "": a session from before intercept states
		return session.InterceptActive
	}
	return it.State
}

// shortDuration prints 15m, 1h30m, 45s.
func shortDuration(d time.Duration) string {
	if d < time.Minute {
		return d.Round(time.Second).String()
	}
	s := strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func newDownCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "End the running session: remove routes and device, disconnect",
		Long: `End the running session: DNS settings, routes and device are restored and
removed. With no session running, down still repairs what a crashed one left.

Exit codes: 0 when a session ended or leftovers were repaired; 1 on failure,
and without --json also when nothing was up and nothing needed repair. With
--json that is no error: it prints {"state": "down", "ended": false,
"repaired": []} and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			paths := session.DefaultPaths()
			res := downResult{State: "down", Ended: true, Repaired: []string{}}
			err := session.NewClient(paths.Socket).Down(ctx)
			if errors.Is(err, session.ErrNotRunning) {
				res.Ended = false
				repaired, rerr := session.Repair(paths)
				res.Repaired = append(res.Repaired, repaired...)
				if !asJSON {
					for _, r := range repaired {
						fmt.Fprintln(cmd.OutOrStdout(), "repaired:", r)
					}
				}
				switch {
				case rerr != nil:
					return rerr
				case asJSON:
					return printJSON(cmd.OutOrStdout(), res)
				case len(repaired) == 0:
					return err
				}
				return nil
			}
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "down")
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// printDiagnostics is the seed's "connection diagnostics": where names go,
// what a program started by run would see, and a few live resolutions.
func printDiagnostics(ctx context.Context, w io.Writer, st session.Status) {
	fmt.Fprintf(w, "\ndns upstreams:       %s\n", strings.Join(st.DNSUpstreams, " "))
	fmt.Fprintf(w, "dns search:          %s\n", strings.Join(st.DNSSearch, " "))
	fmt.Fprintf(w, "dns routing domains: %s\n", strings.Join(st.DNSRouting, " "))
	fmt.Fprintf(w, "run environment:     %s\n", strings.Join(session.RunEnv(st), " "))
	if st.DNSListen == "" {
		return
	}
	fmt.Fprintln(w, "sample resolutions:")
	for _, name := range []string{"kubernetes.default.svc." + st.ClusterDomain, "kubernetes.default", "nonexistent-bridgetun-check." + st.Namespace} {
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, st.DNSListen)
		}}
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		start := time.Now()
		addrs, err := r.LookupHost(qctx, name)
		cancel()
		res := strings.Join(addrs, " ")
		if err != nil {
			res = err.Error()
		}
		fmt.Fprintf(w, "  %-45s %s (%s)\n", name, res, time.Since(start).Round(time.Microsecond))
	}
}
