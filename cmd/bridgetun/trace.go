package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/devflow"
	"github.com/bridgetun/bridgetun/session"
)

func newTraceCmd() *cobra.Command {
	var (
		headers []string
		method  string
		timeout time.Duration
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "trace URL",
		Short: "Check that every service on a request's path passes the " + api.RouteAsHeader + " header on",
		Long: `Check header propagation, which isolated intercepts (intercept --isolate) depend
on: every service on a request's path must pass the ` + api.RouteAsHeader + ` header
on to the services it calls, or the request leaves the developer's route half-way.

trace opens a trace at the gateway, sends one request to URL with a unique
` + api.RouteAsHeader + ` value (` + api.TracePrefix + `…) through the session (the TUN's
routes, or the session's proxy in netstack mode), and prints the services the
request reached in order: ✓ for one that got the value, ✗ for one that was
called without the header, with the service that dropped it:

  gateway ✓ (10.96.251.90:80) → frontend ✓ → api ✓ → stats ✗ "api dropped it on its call to stats"

The gateway's hop names the cluster addresses your workstation connected to
through it while the trace was open (it forwards TCP and does not read HTTP,
so other connections of yours at that moment show there too).

Only services with a bridgetun sidecar take part: those someone on the gateway
intercepts in isolated mode, e.g. ` + "`bridgetun intercept api --port 8080 --isolate -- CMD`" + `
(any route-as value: the trace's own value matches no developer's route, so
the request is served by the cluster's copies). A service without a sidecar
is not seen: a drop in it shows as ✗ at the next service that has one, blamed
on the last one before it that has one. A service "called without the header"
is one that got a request without it while the trace was open (a few
seconds): other traffic to it at that moment can stand in for the trace's, so
on a busy service read ✗ as likely, not certain. It needs a session
(bridgetun up).

Exit codes: 0 when every participating service saw the value (and the request
was answered); 1 when one was called without it, when the request failed, or
when trace could not run (the reason on stderr); 2 when no participating
service reported the request (nothing to judge). With --json it prints
{id, method, url, status, error, chain: [{namespace, service, propagated, seen,
without, reason, at}], gateway: [{dst, at}], verdict: propagated|dropped|inconclusive,
reason}.`,
		Example: `  bridgetun trace http://frontend/
  bridgetun trace http://api/orders -X POST --header 'Authorization=Bearer t0ken' --json | jq .chain`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			h := http.Header{}
			for _, kv := range headers {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || strings.TrimSpace(k) == "" {
					return fmt.Errorf("--header %q: want NAME=VALUE", kv)
				}
				h.Add(strings.TrimSpace(k), v)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+30*time.Second)
			defer cancel()
			sc := session.NewClient(session.DefaultPaths().Socket)
			res, err := devflow.Trace(ctx, devflow.TraceConfig{Session: sc, URL: args[0], Method: strings.ToUpper(method), Header: h, Timeout: timeout})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				if err := printJSON(w, res); err != nil {
					return err
				}
			} else {
				ns := ""
				if st, err := sc.Status(ctx); err == nil {
					ns = st.Namespace
				}
				res.Render(w, ns)
			}
			if code := res.ExitCode(); code != 0 {
				return &devflow.ExitError{Code: code} // the output said why
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&headers, "header", nil, "add a header to the request, NAME=VALUE (repeatable)")
	f.StringVarP(&method, "method", "X", http.MethodGet, "the request's method")
	f.DurationVar(&timeout, "timeout", devflow.DefaultTraceTimeout, "give up on the request after this")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
