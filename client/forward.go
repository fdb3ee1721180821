package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/bridgetun/bridgetun/internal/splice"
)

// Forward listens on local (a loopback address normally) and relays each
// connection through the netstack tunnel to remote, until ctx ends. It is how
// programs on a no-root workstation reach a cluster address. It returns the
// bound address.
func (c *Client) Forward(ctx context.Context, local, remote string, log *slog.Logger) (net.Addr, error) {
	if c.stack == nil {
		return nil, errors.New("forward: only in netstack mode (in TUN mode, dial the destination directly)")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", local)
	if err != nil {
		return nil, fmt.Errorf("forward %s: %w", local, err)
	}
	go func() {
		<-ctx.Done()
		_ = ln.Close()
	}()
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := c.stack.DialContext(ctx, "tcp", remote)
				if err != nil {
					log.Warn("forward dial failed", "remote", remote, "err", err)
					return
				}
				defer out.Close()
				Relay(in, out)
			}()
		}
	}()
	return ln.Addr(), nil
}

// ParseForward splits "LOCAL=REMOTE".
func ParseForward(spec string) (local, remote string, err error) {
	local, remote, ok := strings.Cut(spec, "=")
	if !ok || local == "" || remote == "" {
		return "", "", fmt.Errorf("--forward %q: want LOCAL=REMOTE, e.g. 127.0.0.1:8080=10.96.0.20:80", spec)
	}
	return local, remote, nil
}

// Relay copies both ways, passing half-closes on, until both directions end.
func Relay(a, b net.Conn) { splice.Relay(a, b) }
