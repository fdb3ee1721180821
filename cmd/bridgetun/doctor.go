package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/devflow"
	"github.com/bridgetun/bridgetun/doctor"
	"github.com/bridgetun/bridgetun/session"
)

func newDoctorCmd() *cobra.Command {
	var (
		cf          connFlags
		asJSON      bool
		foreignName string
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the session, the tunnel, routes and DNS on this machine: one verdict per check",
		Long: `Check what makes bridgetun work on this machine and say what to do about what
does not, one line per check:

  session      is a session up and connected
  gateway      the gateway's version against this client's
  transport    the WireGuard handshake's age on the session's transport
  api-server   the kubeconfig's API server is reachable, and not routed into
               the tunnel (the tunnel would carry its own control traffic)
  routes       where the OS really sends each tunnel route, with every routing
               table and policy rule (another VPN, such as wg-quick or
               Tailscale, claiming the cluster's range is named)
  mtu          (TUN mode) a DNS query padded to the TUN's MTU, sent with the
               don't-fragment bit through the tunnel, is answered like a small
               one: otherwise a link between here and the gateway drops
               full-size packets (a path-MTU black hole) and it says which
               --mtu to use
  dns-cluster  a cluster name resolved the way programs here resolve it, the
               answer, the latency and the nameservers the OS names
  dns-foreign  a name outside the cluster (--foreign-name) still resolves
  intercept    each intercept's state

It only reads: no route, resolver setting or cluster object is changed. It
needs no root.

Exit codes: 0 when no check failed (warnings allowed), 1 when one did (or
doctor itself could not run). With --json it prints the verdicts as a JSON
array of {check, status, detail, fix}, status one of ok, warn, fail, skip.`,
		Example: `  bridgetun doctor
  bridgetun doctor --json | jq '.[] | select(.status != "ok")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			in := doctor.Inputs{ForeignName: foreignName, System: doctor.SystemOf()}
			st, err := session.NewClient(session.DefaultPaths().Socket).Status(ctx)
			if err == nil {
				in.Status = &st
			}
			in.StatusErr = err
			opts := cf.options()
			if opts.Context == "" && in.Status != nil {
				opts.Context = in.Status.Context // the session's cluster
			}
			opts.ProbeTimeout = 5 * time.Second
			conn, cerr := cluster.Connect(ctx, opts)
			var vs []doctor.Verdict
			if cerr == nil {
				in.APIServer = conn.Host
				vs = doctor.Run(ctx, in)
			} else {
				vs = doctor.Run(ctx, in)
				for i := range vs {
					if vs[i].Check == "api-server" {
						vs[i] = doctor.Verdict{Check: "api-server", Status: doctor.Fail, Detail: cerr.Error()}
					}
				}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				if err := printJSON(w, vs); err != nil {
					return err
				}
			} else {
				for _, v := range vs {
					fmt.Fprintln(w, v)
				}
			}
			if doctor.Failed(vs) {
				return &devflow.ExitError{Code: 1} // the verdicts said why
			}
			return nil
		},
	}
	cf.add(cmd, "kubeconfig context to check (default: the session's, else the current context)", "unused: checks are of the session's namespace")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the verdicts as JSON")
	cmd.Flags().StringVar(&foreignName, "foreign-name", "example.com", "a name outside the cluster that should resolve through your usual resolver (\"\" = skip)")
	return cmd
}
