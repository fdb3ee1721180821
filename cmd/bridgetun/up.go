package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/client/gvisorstack"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/internal/obs"
	"github.com/bridgetun/bridgetun/internal/version"
	"github.com/bridgetun/bridgetun/session"
	"github.com/bridgetun/bridgetun/tunnel"
)

// connFlags are the kubectl-style flags that name a cluster connection:
// what commands that talk to a running session (intercept, run) accept.
type connFlags struct {
	kubeconfig, context, namespace string
}

// add registers the flags; contextHelp and namespaceHelp say what they
// mean for cmd.
func (f *connFlags) add(cmd *cobra.Command, contextHelp, namespaceHelp string) {
	cmd.Flags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	cmd.Flags().StringVar(&f.context, "context", "", contextHelp)
	cmd.Flags().StringVarP(&f.namespace, "namespace", "n", "", namespaceHelp)
}

func (f *connFlags) options() cluster.Options {
	return cluster.Options{Kubeconfig: f.kubeconfig, Context: f.context, Namespace: f.namespace}
}

// clusterFlags are connFlags plus the gateway's: for the commands that
// install or reach the gateway themselves (up, install, uninstall).
type clusterFlags struct {
	connFlags
	gatewayNamespace, gatewayImage string
}

func (f *clusterFlags) add(cmd *cobra.Command) {
	f.connFlags.add(cmd, "kubeconfig context (default: the current context)", "namespace to connect to (default: the context's namespace)")
	cmd.Flags().StringVar(&f.gatewayNamespace, "gateway-namespace", "", "namespace of the in-cluster gateway (default: the connection namespace)")
	cmd.Flags().StringVar(&f.gatewayImage, "gateway-image", defaultGatewayImage(), "gateway image (env BRIDGETUN_GATEWAY_IMAGE)")
}

func defaultGatewayImage() string {
	if img := os.Getenv("BRIDGETUN_GATEWAY_IMAGE"); img != "" {
		return img
	}
	return "ghcr.io/bridgetun/bridgetun-agent:" + version.Version
}

func newUpCmd() *cobra.Command {
	var (
		cf                                       clusterFlags
		transport, endpoint, tunName, expose     string
		metricsAddr, logLevel, dnsMode           string
		socksAddr, httpProxyAddr                 string
		socksAuth, httpProxyAuth                 string
		netstackMode, allowConflicts, background bool
		asJSON                                   bool
		upgrade, forwardAll, allowAPIServer      bool
		alsoProxy, forwards                      []string
		mtu                                      int
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Join this machine to the cluster network",
		Long: `Join this machine to the cluster network: every pod and service IP of the
cluster becomes reachable from here through a WireGuard tunnel to an
in-cluster gateway (installed on first use).

TUN mode (default) needs root and routes the cluster's service and pod CIDRs
through a TUN device, for every program on the machine. --netstack needs no
root: the tunnel ends in a userspace network stack, reached through SOCKS5
(--socks) and HTTP (--http-proxy) proxies on loopback and --forward
listeners. Other local users can reach loopback too: --socks-auth and
--http-proxy-auth USER:PASS (or, kept out of ps, $BRIDGETUN_SOCKS_AUTH and
$BRIDGETUN_HTTP_PROXY_AUTH) make the proxies require credentials, and
` + "`bridgetun run`" + ` exports proxy URLs that carry them.

The session runs in the foreground until Ctrl-C (or --background shows its
steps and returns once it is connected); then routes and device are removed.
` + "`bridgetun status`" + ` shows it, ` + "`bridgetun down`" + ` ends it. A session that crashed is
repaired by the next up.

Transports: --transport stream carries WireGuard over a Kubernetes
port-forward to the gateway pod; udp sends plain UDP to the gateway's UDP
port (--gateway-endpoint, or its NodePort with --expose nodeport). auto (the
default) uses UDP when a UDP endpoint is known and keeps the stream open
beside it: when UDP goes unanswered for 2 s the session moves to the stream,
and it probes UDP with a handshake (every 5 s, backing off to 30 s) and moves
back once UDP answers, all under one WireGuard session, so connections
survive. ` + "`bridgetun status`" + ` shows the path in use and the number of moves;
without a UDP endpoint auto is the stream.

Under sudo only the TUN device, routes and DNS settings are root's; the rest
is yours: your kubeconfig ($KUBECONFIG if sudo kept it, else ~/.kube/config),
key and session record in ~/.config/bridgetun, the socket in your runtime
dir, so status, intercept, leave, down and run need no sudo, and commands
they start run as you. Logs (bridgetun.log, up.out) and volume mirrors go to
$XDG_STATE_HOME/bridgetun (default ~/.local/state/bridgetun; without a home,
$TMPDIR/bridgetun-UID).

Exit codes: 0 when a foreground session ended by Ctrl-C or ` + "`bridgetun down`" + `, or
when --background left it connected; 1 when it could not start or failed
(the reason on stderr). With --background --json the steps go to stderr and
stdout gets the connected session's status as ` + "`bridgetun status --json`" + ` prints it.`,
		Example: `  sudo bridgetun up -n my-app
  sudo bridgetun up --background --transport udp --expose nodeport
  bridgetun up --netstack
  BRIDGETUN_SOCKS_AUTH=me:s3cret bridgetun up --netstack --socks 0.0.0.0:1080
  bridgetun up --netstack --forward-all --forward db=15432`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON && !background {
				return errors.New("--json goes with --background (a foreground session prints its steps until it ends)")
			}
			if !netstackMode {
				if err := tunnel.TUNSupported(); err != nil {
					return err
				}
				if os.Geteuid() != 0 {
					return errors.New("TUN mode needs root: run with sudo, or use --netstack")
				}
			}
			// Under sudo, root keeps only TUN, routes and DNS: the
			// kubeconfig, key, socket, logs and mirrors are the user's.
			u, err := invoker.Current()
			if err != nil {
				return err
			}
			paths := session.UserPaths(u)
			if background && os.Getenv(backgroundChildEnv) == "" {
				return startBackground(cmd, u, paths, asJSON)
			}
			log, closeLog, err := openLog(u, paths, logLevel)
			if err != nil {
				return err
			}
			defer closeLog()
			cfg := session.Config{
				Cluster: cf.options(), GatewayNamespace: cf.gatewayNamespace, GatewayImage: cf.gatewayImage,
				Upgrade: upgrade, Transport: transport, GatewayEndpoint: endpoint,
				Mode: client.ModeTUN, TUNName: tunName, AllowConflicts: allowConflicts, MTU: mtu,
				Paths: paths, Log: log, Progress: cmd.OutOrStdout(), Forwards: forwards, ForwardAll: forwardAll, DNS: dnsMode,
				SOCKSAddr: socksAddr, HTTPProxyAddr: httpProxyAddr, AllowAPIServer: allowAPIServer,
			}
			cfg.Cluster.ReadAs = u
			if !netstackMode && (socksAuth != "" || httpProxyAuth != "") {
				return errors.New("--socks-auth and --http-proxy-auth need --netstack (the proxies run only in netstack mode; in TUN mode programs reach cluster addresses directly)")
			}
			if netstackMode {
				if cfg.SOCKSAuth, err = session.ProxyCredentialsFrom("socks-auth", socksAuth, session.SOCKSAuthEnv); err != nil {
					return err
				}
				if cfg.HTTPProxyAuth, err = session.ProxyCredentialsFrom("http-proxy-auth", httpProxyAuth, session.HTTPAuthEnv); err != nil {
					return err
				}
			}
			if dnsMode != session.DNSAuto && dnsMode != session.DNSNone {
				return fmt.Errorf("--dns %q: want auto or none", dnsMode)
			}
			switch expose {
			case "":
			case "nodeport":
				cfg.ExposeNodePort = true
			default:
				return fmt.Errorf("--expose %q: the only choice is nodeport", expose)
			}
			if netstackMode {
				cfg.Mode, cfg.NewStack = client.ModeNetstack, gvisorstack.New
			} else if len(forwards) > 0 {
				return errors.New("--forward needs --netstack (in TUN mode, programs reach cluster addresses directly)")
			} else if forwardAll {
				return errors.New("--forward-all needs --netstack (in TUN mode, programs reach Service addresses directly)")
			}
			for _, s := range alsoProxy {
				p, err := netip.ParsePrefix(s)
				if err != nil {
					return fmt.Errorf("--also-proxy %q: want a CIDR such as 10.20.0.0/16", s)
				}
				cfg.AlsoProxy = append(cfg.AlsoProxy, p)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			reg := obs.NewRegistry()
			cfg.Registerer = reg
			if metricsAddr != "" {
				bound, err := obs.ServeMetrics(ctx, metricsAddr, reg, log, nil)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "metrics on http://%s/metrics\n", bound)
			}
			client.TuneGC()
			return session.Run(ctx, cfg)
		},
	}
	cf.add(cmd)
	cmd.Flags().StringVar(&transport, "transport", "auto", "auto (UDP while it answers, the stream when it does not, switching live), stream (over a Kubernetes port-forward), or udp")
	cmd.Flags().StringVar(&endpoint, "gateway-endpoint", "", "udp and auto transports: HOST:PORT of the gateway's UDP port (default: its NodePort)")
	cmd.Flags().StringVar(&expose, "expose", "", "nodeport: also expose the gateway's WireGuard UDP port as a NodePort")
	cmd.Flags().BoolVar(&netstackMode, "netstack", false, "no root: end the tunnel in a userspace network stack instead of a TUN device")
	cmd.Flags().StringVar(&tunName, "tun-name", "bt0", "name of the TUN device")
	cmd.Flags().BoolVar(&allowConflicts, "allow-conflicts", false, "route cluster CIDRs even where they overlap existing routes")
	cmd.Flags().StringArrayVar(&alsoProxy, "also-proxy", nil, "extra CIDR to send through the gateway (repeatable); the gateway dials it for this workstation only, never cloud metadata, a kubelet port or another workstation")
	cmd.Flags().BoolVar(&allowAPIServer, "allow-api-server", false, "let the gateway dial the Kubernetes API server for this workstation (its kubernetes Service address; refused by default, so nothing reaches the API server through the tunnel with the gateway's network identity)")
	cmd.Flags().IntVar(&mtu, "mtu", 0, "inner MTU (default 1420)")
	cmd.Flags().StringArrayVar(&forwards, "forward", nil, "netstack mode: SVC[:PORT][=LOCALPORT] forwards a Service's TCP and UDP ports on its own 127.0.0.x; [udp:]LOCAL=REMOTE forwards an address, e.g. 127.0.0.1:8080=10.96.0.20:80 (repeatable)")
	cmd.Flags().BoolVar(&forwardAll, "forward-all", false, "netstack mode: forward every Service of the namespace, each on its own 127.0.0.x, kept current as Services come and go (ports below 1024 on 10000+port)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "with --background: the steps on stderr, the connected session's status as JSON on stdout")
	cmd.Flags().BoolVar(&background, "background", false, "show the session's steps until it is connected, then return and leave it running (logs in ~/.local/state/bridgetun/)")
	cmd.Flags().StringVar(&socksAddr, "socks", "127.0.0.1:1080", "netstack mode: SOCKS5 proxy address (CONNECT, UDP ASSOCIATE, names resolved in the cluster); empty = off")
	cmd.Flags().StringVar(&httpProxyAddr, "http-proxy", "127.0.0.1:3128", "netstack mode: HTTP proxy address (CONNECT and plain requests); empty = off")
	cmd.Flags().StringVar(&socksAuth, "socks-auth", "", "netstack mode: USER:PASS the SOCKS5 proxy requires (RFC 1929); default $"+session.SOCKSAuthEnv+", which keeps it out of ps; with credentials the proxy may listen beyond loopback")
	cmd.Flags().StringVar(&httpProxyAuth, "http-proxy-auth", "", "netstack mode: USER:PASS the HTTP proxy requires (Proxy-Authorization: Basic, else 407); default $"+session.HTTPAuthEnv+", which keeps it out of ps")
	cmd.Flags().StringVar(&dnsMode, "dns", session.DNSAuto, "auto: cluster names resolve on this machine (split DNS via systemd-resolved or /etc/resolv.conf, restored on exit); none: leave the OS resolver alone")
	cmd.Flags().BoolVar(&upgrade, "upgrade", false, "upgrade the gateway when its version differs from this client's")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics on this address, e.g. 127.0.0.1:9091")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error (log file ~/.local/state/bridgetun/bridgetun.log; see above)")
	return cmd
}

// openLog writes the session's log to bridgetun.log in the user's log
// dir, as the user: the directory theirs and private, the file theirs and
// never opened through a symlink.
func openLog(u *invoker.User, paths session.Paths, level string) (*slog.Logger, func(), error) {
	if err := u.PrivateDir(paths.LogDir); err != nil {
		return nil, nil, fmt.Errorf("log dir: %w", err)
	}
	f, err := u.OpenFile(filepath.Join(paths.LogDir, "bridgetun.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open log: %w", err)
	}
	log, err := obs.NewLogger(f, level)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return log, func() { f.Close() }, nil
}
