// Package dptopo builds the data-plane test topology: a workstation that can
// reach a service only through a bridgetun gateway.
//
//	ws  10.200.1.1 ──veth── 10.200.1.2 ┐
//	                                    gw (no IP forwarding) 10.200.2.1 ──veth── 10.200.2.2  svc
//	ws2 10.200.3.1 ──veth── 10.200.3.2 ┘
//
// The gateway runs as a real `bridgetun-agent gateway` process inside gw,
// listening on UDP 51820 and stream TCP 51821, metrics on 10.200.1.2:9100;
// the workstations' clients run in-process with their sockets and TUN
// devices inside ws/ws2. svc runs HTTP (:80, /blob streams 64 MiB with a
// SHA-256 trailer), UDP echo (:7), a TCP sink (:5001), a TCP
// ping-pong (:5002) and an endless TCP source (:5003).
package dptopo

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/bridgetun/bridgetun/agent"
	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/client/gvisorstack"
	"github.com/bridgetun/bridgetun/internal/nstest"
	"github.com/bridgetun/bridgetun/tunnel"
)

// Addresses in the topology.
const (
	SvcIP       = "10.200.2.2"
	GatewayWSIP = "10.200.1.2"
	GatewayWS2  = "10.200.3.2"
	GatewayTun  = "100.96.0.1"
	UDPPort     = 51820
	StreamPort  = 51821
	MetricsPort = 9100
)

// ClientAddrs are the tunnel addresses of the known workstations (index = client number).
var ClientAddrs = []string{"100.96.0.2/32", "100.96.0.3/32", "100.96.0.9/32"}

// Topology is a running lab.
type Topology struct {
	Lab              *nstest.Lab
	WS, WS2, GW, SVC *nstest.NS
	GatewayKey       tunnel.Key
	ClientKeys       []tunnel.Key // [0] ws, [1] ws2, [2] unknown to the gateway
	GatewayEnv       []string     // extra environment of the next StartGateway (e.g. a profile path)
	extraAddrs       []string     // tunnel addresses of AddPeers' workstations (ClientKeys[len(ClientAddrs):])
	agentBin, dir    string
	gw               *exec.Cmd
	gwDone           chan error
	gwLog            io.Writer
	servers          []io.Closer
}

// New builds namespaces, links and the svc servers. agentBin is a built
// bridgetun-agent; gateway logs go to logw.
func New(tag, agentBin string, logw io.Writer) (_ *Topology, err error) {
	t := &Topology{Lab: nstest.NewLab(tag), agentBin: agentBin, gwLog: logw}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.dir, err = os.MkdirTemp("", "bridgetun-dp-"); err != nil {
		return nil, err
	}
	for _, p := range []struct {
		ns   **nstest.NS
		name string
	}{{&t.WS, "ws"}, {&t.WS2, "ws2"}, {&t.GW, "gw"}, {&t.SVC, "svc"}} {
		if *p.ns, err = t.Lab.NewNS(p.name); err != nil {
			return nil, err
		}
	}
	links := []struct {
		a      *nstest.NS
		an, aa string
		b      *nstest.NS
		bn, ba string
	}{
		{t.WS, "eth0", "10.200.1.1/24", t.GW, "ws0", "10.200.1.2/24"},
		{t.WS2, "eth0", "10.200.3.1/24", t.GW, "ws1", "10.200.3.2/24"},
		{t.GW, "svc0", "10.200.2.1/24", t.SVC, "eth0", "10.200.2.2/24"},
	}
	for _, l := range links {
		if err := t.Lab.Link(l.a, l.an, l.aa, l.b, l.bn, l.ba); err != nil {
			return nil, err
		}
	}
	if err := t.GW.Run("sysctl", "-qw", "net.ipv4.ip_forward=0"); err != nil {
		return nil, err
	}
	// svc answers the gateway's dials; replies to workstations would need a
	// route it does not have — which is the point.
	if err := t.SVC.Run("ip", "route", "add", "default", "via", "10.200.2.1"); err != nil {
		return nil, err
	}
	for range 3 {
		k, err := tunnel.GenerateKey()
		if err != nil {
			return nil, err
		}
		t.ClientKeys = append(t.ClientKeys, k)
	}
	if t.GatewayKey, err = tunnel.GenerateKey(); err != nil {
		return nil, err
	}
	if err := t.startServers(); err != nil {
		return nil, err
	}
	return t, nil
}

// StartGateway (re)starts the gateway process with the given inner MTU and
// waits until its metrics endpoint answers.
func (t *Topology) StartGateway(ctx context.Context, mtu int) error {
	t.StopGateway()
	f := agent.GatewayFile{
		PrivateKey:   t.GatewayKey.String(),
		Address:      GatewayTun,
		UDPPort:      UDPPort,
		StreamListen: fmt.Sprintf("0.0.0.0:%d", StreamPort),
		MTU:          mtu,
	}
	for i := range 2 { // the third key stays unknown
		f.Peers = append(f.Peers, agent.PeerFile{PublicKey: t.ClientKeys[i].PublicKey().String(), AllowedIPs: []string{ClientAddrs[i]}})
	}
	for i, a := range t.extraAddrs {
		f.Peers = append(f.Peers, agent.PeerFile{PublicKey: t.ClientKeys[len(ClientAddrs)+i].PublicKey().String(), AllowedIPs: []string{a}})
	}
	path := filepath.Join(t.dir, "gateway.json")
	b, _ := json.Marshal(f)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return err
	}
	cmd := t.GW.Command(context.Background(), t.agentBin, "gateway", "--config", path,
		"--metrics-addr", fmt.Sprintf("%s:%d", GatewayWSIP, MetricsPort), "--log-level", "info")
	cmd.Stdout, cmd.Stderr = t.gwLog, t.gwLog
	if len(t.GatewayEnv) > 0 {
		cmd.Env = append(os.Environ(), t.GatewayEnv...)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start gateway: %w", err)
	}
	t.gw, t.gwDone = cmd, make(chan error, 1)
	go func() { t.gwDone <- cmd.Wait() }()
	deadline, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		if _, err := t.GatewayMetrics(deadline); err == nil {
			return nil
		}
		select {
		case err := <-t.gwDone:
			t.gwDone <- err
			return fmt.Errorf("gateway exited during start: %v", err)
		case <-deadline.Done():
			return fmt.Errorf("gateway not ready: %w", deadline.Err())
		case <-time.After(50 * time.Millisecond): // poll interval while waiting for readiness
		}
	}
}

// GatewayAlive reports whether the gateway process still runs.
func (t *Topology) GatewayAlive() bool {
	if t.gw == nil {
		return false
	}
	select {
	case err := <-t.gwDone:
		t.gwDone <- err
		return false
	default:
		return true
	}
}

// StopGateway ends the gateway process, if any.
func (t *Topology) StopGateway() {
	if t.gw == nil {
		return
	}
	_ = t.gw.Process.Signal(os.Interrupt)
	select {
	case <-t.gwDone:
	case <-time.After(5 * time.Second):
		_ = t.gw.Process.Kill()
		<-t.gwDone
	}
	t.gw = nil
}

// GatewayMetrics fetches the gateway's /metrics text from ws.
func (t *Topology) GatewayMetrics(ctx context.Context) (string, error) {
	c, err := t.WS.DialContext(ctx, "tcp", fmt.Sprintf("%s:%d", GatewayWSIP, MetricsPort))
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: gw\r\n\r\n")
	b, err := io.ReadAll(bufio.NewReader(c))
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(string(b), "HTTP/1.0 200") && !strings.HasPrefix(string(b), "HTTP/1.1 200") {
		return "", fmt.Errorf("metrics: %.40q", b)
	}
	return string(b), nil
}

// AddPeers adds n workstations the next StartGateway knows (scale
// benchmarks) and returns their indices for ClientConfig.
func (t *Topology) AddPeers(n int) ([]int, error) {
	var idx []int
	for range n {
		k, err := tunnel.GenerateKey()
		if err != nil {
			return nil, err
		}
		j := len(t.extraAddrs)
		t.ClientKeys = append(t.ClientKeys, k)
		t.extraAddrs = append(t.extraAddrs, fmt.Sprintf("100.96.%d.%d/32", 1+j/250, 1+j%250))
		idx = append(idx, len(t.ClientKeys)-1)
	}
	return idx, nil
}

// GatewayPID is the running gateway process's pid (0 = none).
func (t *Topology) GatewayPID() int {
	if t.gw == nil {
		return 0
	}
	return t.gw.Process.Pid
}

func (t *Topology) clientAddr(i int) string {
	if i < len(ClientAddrs) {
		return ClientAddrs[i]
	}
	return t.extraAddrs[i-len(ClientAddrs)]
}

// ClientConfig returns the config for workstation i over transport/mode.
// ns is where the client's sockets live (for the stream dialer).
func (t *Topology) ClientConfig(i int, ns *nstest.NS, tr client.Transport, mode client.Mode, mtu int) client.Config {
	gwIP := GatewayWSIP
	if ns == t.WS2 {
		gwIP = GatewayWS2
	}
	cfg := client.Config{
		PrivateKey: t.ClientKeys[i],
		Addr:       netip.MustParsePrefix(t.clientAddr(i)),
		GatewayKey: t.GatewayKey.PublicKey(),
		Routes:     []netip.Prefix{netip.MustParsePrefix("10.200.2.0/24"), netip.MustParsePrefix(GatewayTun + "/32")},
		Mode:       mode,
		Transport:  tr,
		MTU:        mtu,
		NewStack:   gvisorstack.New,
	}
	switch tr {
	case client.TransportUDP:
		cfg.GatewayEndpoint = fmt.Sprintf("%s:%d", gwIP, UDPPort)
		cfg.BindUDP = udpBindIn(ns)
	case client.TransportStream:
		addr := fmt.Sprintf("%s:%d", gwIP, StreamPort)
		cfg.StreamDial = func(ctx context.Context) (net.Conn, error) { return ns.DialContext(ctx, "tcp", addr) }
	}
	return cfg
}

// Connect starts a client with its sockets and TUN device inside ns.
func Connect(ns *nstest.NS, cfg client.Config) (*client.Client, error) {
	var c *client.Client
	err := ns.Do(func() error {
		var err error
		c, err = client.Start(cfg)
		return err
	})
	return c, err
}

// Close stops the gateway and servers and deletes the namespaces.
func (t *Topology) Close() {
	t.StopGateway()
	for _, s := range t.servers {
		_ = s.Close()
	}
	if t.Lab != nil {
		_ = t.Lab.Close()
	}
	if t.dir != "" {
		_ = os.RemoveAll(t.dir)
	}
}
