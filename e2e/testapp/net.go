package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type headers []string

func (h *headers) String() string     { return strings.Join(*h, ",") }
func (h *headers) Set(s string) error { *h = append(*h, s); return nil }

func runGet(args []string) error {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	var hs headers
	fs.Var(&hs, "H", "header K:V (repeatable)")
	timeout := fs.Duration("timeout", 10*time.Second, "request timeout")
	h2c := fs.Bool("h2c", false, "speak HTTP/2 with prior knowledge (h2c, as gRPC does)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: get [-h2c] [-H K:V]... URL")
	}
	req, err := http.NewRequest(http.MethodGet, fs.Arg(0), nil)
	if err != nil {
		return err
	}
	for _, h := range hs {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	client := &http.Client{Timeout: *timeout}
	if *h2c {
		t := &http.Transport{Protocols: new(http.Protocols)}
		t.Protocols.SetUnencryptedHTTP2(true)
		client.Transport = t
	}
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if _, err := io.Copy(os.Stdout, res.Body); err != nil {
		return err
	}
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("status %s", res.Status)
	}
	return nil
}

func runDial(args []string) error {
	fs := flag.NewFlagSet("dial", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 3*time.Second, "connect timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: dial [-timeout D] HOST:PORT")
	}
	c, err := net.DialTimeout("tcp", fs.Arg(0), *timeout)
	if err != nil {
		return err
	}
	fmt.Printf("connected %s -> %s\n", c.LocalAddr(), c.RemoteAddr())
	return c.Close()
}

func runUDP(args []string) error {
	fs := flag.NewFlagSet("udp", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 3*time.Second, "reply timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return errors.New("usage: udp [-timeout D] HOST:PORT MESSAGE")
	}
	c, err := net.Dial("udp", fs.Arg(0))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(*timeout))
	if _, err := c.Write([]byte(fs.Arg(1))); err != nil {
		return err
	}
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	fmt.Printf("%s\n", buf[:n])
	return nil
}

func runUDPEcho(args []string) error {
	fs := flag.NewFlagSet("udp-echo", flag.ContinueOnError)
	listen := fs.String("listen", envOr("LISTEN", ":5353"), "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", *listen)
	if err != nil {
		return err
	}
	log.Printf("testapp udp-echo on %s", *listen)
	buf := make([]byte, 65535)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		if _, err := pc.WriteTo(buf[:n], addr); err != nil {
			log.Printf("reply to %s: %v", addr, err)
		}
	}
}

func runLookup(args []string) error {
	fs := flag.NewFlagSet("lookup", flag.ContinueOnError)
	server := fs.String("server", "", "DNS server IP:PORT (default: the system resolver)")
	socks := fs.String("socks", "", "send the query over this SOCKS5 proxy's UDP ASSOCIATE (needs -server)")
	timeout := fs.Duration("timeout", 3*time.Second, "timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || (*socks != "" && *server == "") {
		return errors.New("usage: lookup [-server IP:53 [-socks HOST:PORT]] NAME")
	}
	r := net.DefaultResolver
	if *socks != "" {
		dst, err := netip.ParseAddrPort(*server)
		if err != nil {
			return fmt.Errorf("-server %q: %w", *server, err)
		}
		r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			if network != "udp" {
				return nil, errors.New("lookup over SOCKS: UDP only")
			}
			return dialSOCKSUDP(*socks, dst, *timeout)
		}}
	} else if *server != "" {
		r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, *server)
		}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	addrs, err := r.LookupHost(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	fmt.Println(strings.Join(addrs, " "))
	return nil
}

// runSink serves the bulk-transfer protocol: an 8-byte big-endian length N,
// then N bytes; it answers "N <sha256>\n" once it has them all. The length
// prefix means no half-close is needed (kubectl port-forward drops those).
// A length with the top bit set (PullFlag|N) asks the other way: the sink
// sends N bytes, then "<sha256>\n" of them, for download measurements.
func runSink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	listen := fs.String("listen", envOr("LISTEN", ":9000"), "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	log.Printf("testapp sink on %s", *listen)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			var hdr [8]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			want := binary.BigEndian.Uint64(hdr[:])
			if want&PullFlag != 0 {
				_ = servePull(c, int64(want&^PullFlag))
				return
			}
			h := sha256.New()
			n, _ := io.CopyN(h, c, int64(want))
			fmt.Fprintf(c, "%d %x\n", n, h.Sum(nil))
		}()
	}
}

// PullFlag marks a sink request for a download (see runSink).
const PullFlag = 1 << 63

// servePull sends n pseudo-random bytes and then their SHA-256 as hex.
func servePull(c net.Conn, n int64) error {
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{byte(time.Now().UnixNano())})
	buf := make([]byte, 256<<10)
	for sent := int64(0); sent < n; {
		chunk := buf[:min(int64(len(buf)), n-sent)]
		_, _ = rng.Read(chunk)
		h.Write(chunk)
		if _, err := c.Write(chunk); err != nil {
			return err
		}
		sent += int64(len(chunk))
	}
	_, err := fmt.Fprintf(c, "%x\n", h.Sum(nil))
	return err
}

// runSource sends BYTES pseudo-random bytes to a sink and checks the count
// and SHA-256 it reports: the transfer arrived intact.
func runSource(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: source HOST:PORT BYTES")
	}
	total, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	got, err := SendBulk(c, total)
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	fmt.Printf("sent %d bytes intact (sha256 matches), %.3fs, %.1f MB/s\n", got, secs, float64(total)/secs/1e6)
	return nil
}

// SendBulk runs the sender side of the sink protocol on c.
func SendBulk(c net.Conn, total int64) (int64, error) {
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(total))
	if _, err := c.Write(hdr[:]); err != nil {
		return 0, err
	}
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{byte(time.Now().UnixNano())})
	buf := make([]byte, 256<<10)
	for sent := int64(0); sent < total; {
		chunk := buf[:min(int64(len(buf)), total-sent)]
		_, _ = rng.Read(chunk)
		h.Write(chunk)
		if _, err := c.Write(chunk); err != nil {
			return sent, err
		}
		sent += int64(len(chunk))
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("sink reply: %w", err)
	}
	want := fmt.Sprintf("%d %x", total, h.Sum(nil))
	if got := strings.TrimSpace(reply); got != want {
		return 0, fmt.Errorf("sink got %q, want %q", got, want)
	}
	return total, nil
}

func runPause([]string) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			return nil
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
	return nil
}
