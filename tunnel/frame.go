package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxFrameSize is the largest packet a frame can carry: the length prefix
// is 16 bits, which also bounds a WireGuard message (wireguard-go's
// MaxMessageSize).
const MaxFrameSize = 65535

// MaxInnerMTU is the largest inner MTU bridgetun configures (the stream
// transport allows more than a path MTU would).
const MaxInnerMTU = 65000

// StreamMTU is the inner MTU bridgetun uses on the stream transport: no
// path MTU applies to a TCP stream, and larger packets cut the per-packet
// cost that dominates (bench-dataplane: P3 at 32000 moves ~2.5x what it
// moves at 1420).
const StreamMTU = 32000

// maxMessageSize bounds a WireGuard message for MaxInnerMTU: the packet
// plus transport header and authentication tag. A longer frame on a
// stream cannot come from a bridgetun peer and counts as oversized.
const maxMessageSize = MaxInnerMTU + 32

// ErrFrameTooLarge reports a frame that does not fit: a packet longer than
// MaxFrameSize to write, or a length prefix longer than the read buffer.
var ErrFrameTooLarge = errors.New("frame too large")

// WriteFrame writes pkt as one frame: a 2-byte big-endian length, then pkt.
// It issues a single Write so frames from concurrent callers sharing a
// locked writer never interleave.
func WriteFrame(w io.Writer, pkt []byte) error {
	if len(pkt) > MaxFrameSize {
		return fmt.Errorf("write frame of %d bytes: %w", len(pkt), ErrFrameTooLarge)
	}
	if bw, ok := w.(interface {
		io.Writer
		Available() int
		WriteByte(byte) error
	}); ok && bw.Available() >= 2 {
		// bufio.Writer: no temporary buffer, bytes coalesce with other frames.
		bw.WriteByte(byte(len(pkt) >> 8))
		bw.WriteByte(byte(len(pkt)))
		_, err := bw.Write(pkt)
		return err
	}
	buf := make([]byte, 2+len(pkt))
	binary.BigEndian.PutUint16(buf, uint16(len(pkt)))
	copy(buf[2:], pkt)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame into buf and returns the packet length. A
// length prefix larger than buf returns ErrFrameTooLarge without reading
// the body; a stream that ends inside a frame returns io.ErrUnexpectedEOF;
// a stream that ends between frames returns io.EOF. After an error the
// stream is out of step and must be closed.
func ReadFrame(r io.Reader, buf []byte) (int, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n > len(buf) {
		return 0, fmt.Errorf("read frame of %d bytes into %d-byte buffer: %w", n, len(buf), ErrFrameTooLarge)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	return n, nil
}

// bufferedFrameLen returns the length of the next frame if the reader
// already holds all of it, so batch reads never block mid-batch.
func bufferedFrameLen(r interface {
	Buffered() int
	Peek(int) ([]byte, error)
}) (int, bool) {
	if r.Buffered() < 2 {
		return 0, false
	}
	hdr, err := r.Peek(2)
	if err != nil {
		return 0, false
	}
	n := int(binary.BigEndian.Uint16(hdr))
	return n, r.Buffered() >= 2+n
}

// A stream tunnel may use several streams at once (StreamBindConfig.Streams).
// Each such stream opens with a hello frame naming its group, so the
// server answers the group's peer over any of them: "btg1" (no WireGuard
// message type) followed by a random 16-byte group id. A stream without a
// hello is a group of its own.
const (
	groupIDSize     = 16
	helloSize       = 4 + groupIDSize
	maxGroupStreams = 8
)

var helloMagic = [4]byte{'b', 't', 'g', '1'}

// helloFrame is the first frame of a grouped stream.
func helloFrame(group [groupIDSize]byte) []byte {
	return append(helloMagic[:4:4], group[:]...)
}

// parseHello returns the group a hello frame names.
func parseHello(b []byte) ([groupIDSize]byte, bool) {
	var id [groupIDSize]byte
	if len(b) != helloSize || [4]byte(b[:4]) != helloMagic {
		return id, false
	}
	copy(id[:], b[4:])
	return id, true
}
