package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/session"
)

func newStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running session: transport, tunnel address, handshake, routes, traffic",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			st, err := session.NewClient(session.DefaultPaths().Socket).Status(ctx)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
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
			fmt.Fprintf(w, "tunnel:     %s over %s, address %s, handshake %s, reconnects %d\n", dev, st.Transport, st.TunnelAddress, hs, st.Reconnects)
			fmt.Fprintf(w, "traffic:    %d bytes in, %d bytes out\n", st.RxBytes, st.TxBytes)
			fmt.Fprintf(w, "routes:     %s\n", strings.Join(st.Routes, " "))
			fmt.Fprintf(w, "dns:        cluster resolver %s, domain %s\n", st.ClusterDNS, st.ClusterDomain)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newDownCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "End the running session: remove routes and device, disconnect",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			if err := session.NewClient(session.DefaultPaths().Socket).Down(ctx); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "down")
			return nil
		},
	}
}
