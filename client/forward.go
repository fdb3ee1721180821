package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/bridgetun/bridgetun/internal/splice"
)

// ForwardListener is one running forward: a local socket whose connections
// (TCP) or flows (UDP) are relayed through the netstack tunnel.
type ForwardListener struct {
	addr   net.Addr
	cancel context.CancelFunc
	done   chan struct{} // closed once the local socket is closed
	once   sync.Once
}

// Addr returns the bound local address.
func (l *ForwardListener) Addr() net.Addr { return l.addr }

// Close stops the forward and returns once its local socket is closed, so
// the address can be bound again at once. TCP connections already relayed
// run on until either end closes them (or the Client closes); UDP flows
// end. Idempotent.
func (l *ForwardListener) Close() error {
	l.once.Do(l.cancel)
	<-l.done
	return nil
}

// closeWhenDone closes sock when ctx ends, then waits for its reader to
// exit. Only the Close call that closes the descriptor waits for it, hence
// this goroutine: done must not be signalled before the port is free.
func (l *ForwardListener) closeWhenDone(ctx context.Context, sock io.Closer, reader <-chan struct{}) {
	defer close(l.done)
	<-ctx.Done()
	_ = sock.Close()
	<-reader
}

// Forward listens on local (a loopback address normally) and relays each
// connection through the netstack tunnel to remote, until ctx ends. It is how
// programs on a no-root workstation reach a cluster address. It returns the
// bound address.
func (c *Client) Forward(ctx context.Context, local, remote string, log *slog.Logger) (net.Addr, error) {
	l, err := c.ListenForward(ctx, "tcp", local, remote, log)
	if err != nil {
		return nil, err
	}
	return l.Addr(), nil
}

// ListenForward opens a forward for network "tcp" or "udp" (see Forward and
// ForwardUDP); it runs until ctx ends or the listener is closed.
func (c *Client) ListenForward(ctx context.Context, network, local, remote string, log *slog.Logger) (*ForwardListener, error) {
	if c.stack == nil {
		return nil, errors.New("forward: only in netstack mode (in TUN mode, dial the destination directly)")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch network {
	case "tcp":
		return c.listenTCP(ctx, local, remote, log)
	case "udp":
		return c.listenUDP(ctx, local, remote, log)
	}
	return nil, fmt.Errorf("forward %s: network %q: want tcp or udp", local, network)
}

func (c *Client) listenTCP(ctx context.Context, local, remote string, log *slog.Logger) (*ForwardListener, error) {
	ln, err := net.Listen("tcp", local)
	if err != nil {
		return nil, fmt.Errorf("forward %s: %w", local, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &ForwardListener{addr: ln.Addr(), cancel: cancel, done: make(chan struct{})}
	accepting := make(chan struct{})
	go l.closeWhenDone(ctx, ln, accepting)
	go func() {
		defer close(accepting)
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				out, err := c.stack.DialContext(ctx, "tcp", remote)
				if err != nil {
					_ = in.Close()
					log.Warn("forward dial failed", "remote", remote, "err", err)
					return
				}
				// Not ctx: closing the forward leaves its connections be (see Close).
				if _, err := splice.Relay(context.WithoutCancel(ctx), in, out); err != nil {
					log.Debug("forward relay ended", "remote", remote, "err", err)
				}
			}()
		}
	}()
	return l, nil
}

// ParseForward splits "LOCAL=REMOTE".
func ParseForward(spec string) (local, remote string, err error) {
	local, remote, ok := strings.Cut(spec, "=")
	if !ok || local == "" || remote == "" {
		return "", "", fmt.Errorf("--forward %q: want LOCAL=REMOTE, e.g. 127.0.0.1:8080=10.96.0.20:80", spec)
	}
	return local, remote, nil
}
