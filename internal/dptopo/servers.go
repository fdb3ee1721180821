package dptopo

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"time"
)

// BlobSize is what GET /blob sends unless ?n= says otherwise.
const BlobSize = 64 << 20

// startServers opens every svc listener inside svc.
func (t *Topology) startServers() error {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello from svc "+r.RemoteAddr+"\n")
	})
	mux.HandleFunc("/blob", serveBlob)
	ln, err := t.SVC.Listen("tcp", SvcIP+":80")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.servers = append(t.servers, srv)

	pc, err := t.SVC.ListenPacket("udp", SvcIP+":7")
	if err != nil {
		return err
	}
	go udpEcho(pc)
	t.servers = append(t.servers, pc)

	sink, err := t.SVC.Listen("tcp", SvcIP+":5001")
	if err != nil {
		return err
	}
	go acceptLoop(sink, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	t.servers = append(t.servers, sink)

	pong, err := t.SVC.Listen("tcp", SvcIP+":5002")
	if err != nil {
		return err
	}
	go acceptLoop(pong, func(c net.Conn) { _, _ = io.Copy(c, c) })
	t.servers = append(t.servers, pong)

	source, err := t.SVC.Listen("tcp", SvcIP+":5003")
	if err != nil {
		return err
	}
	go acceptLoop(source, func(c net.Conn) {
		buf := make([]byte, 128<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	t.servers = append(t.servers, source)
	return nil
}

// serveBlob streams n pseudo-random bytes and their SHA-256 as a trailer,
// so the receiver can prove the transfer intact without a hard-coded sum.
func serveBlob(w http.ResponseWriter, r *http.Request) {
	n := BlobSize
	if s := r.URL.Query().Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		n = v
	}
	w.Header().Set("Trailer", "X-Sha256")
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{byte(time.Now().UnixNano())})
	buf := make([]byte, 64<<10)
	for n > 0 {
		chunk := buf[:min(n, len(buf))]
		_, _ = rng.Read(chunk)
		h.Write(chunk)
		if _, err := w.Write(chunk); err != nil {
			return
		}
		n -= len(chunk)
	}
	w.Header().Set("X-Sha256", hex.EncodeToString(h.Sum(nil)))
}

func udpEcho(pc net.PacketConn) {
	buf := make([]byte, 65535)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(buf[:n], addr)
	}
}

func acceptLoop(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}
