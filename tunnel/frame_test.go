package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, 32, 1420, MaxFrameSize} {
		pkt := bytes.Repeat([]byte{byte(size)}, size)
		for _, buffered := range []bool{false, true} {
			var out bytes.Buffer
			var w io.Writer = &out
			bw := bufio.NewWriterSize(&out, 4096)
			if buffered {
				w = bw
			}
			if err := WriteFrame(w, pkt); err != nil {
				t.Fatalf("WriteFrame(%d bytes): %v", size, err)
			}
			bw.Flush()
			if got, want := out.Len(), size+2; got != want {
				t.Errorf("frame length for %d bytes (buffered %v): got %d, want %d", size, buffered, got, want)
			}
			buf := make([]byte, MaxFrameSize)
			n, err := ReadFrame(&out, buf)
			if err != nil || !bytes.Equal(buf[:n], pkt) {
				t.Errorf("ReadFrame(%d bytes): got %d bytes, %v; want the packet back", size, n, err)
			}
		}
	}
}

func TestFrameErrors(t *testing.T) {
	if err := WriteFrame(io.Discard, make([]byte, MaxFrameSize+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("WriteFrame(oversize): got %v, want ErrFrameTooLarge", err)
	}
	tests := []struct {
		name string
		in   []byte
		buf  int
		want error
	}{
		{"empty stream", nil, 16, io.EOF},
		{"half header", []byte{0}, 16, io.ErrUnexpectedEOF},
		{"truncated body", []byte{0, 10, 1, 2, 3}, 16, io.ErrUnexpectedEOF},
		{"larger than buffer", []byte{0, 17}, 16, ErrFrameTooLarge},
		{"max prefix", []byte{0xff, 0xff}, 1500, ErrFrameTooLarge},
	}
	for _, tt := range tests {
		_, err := ReadFrame(bytes.NewReader(tt.in), make([]byte, tt.buf))
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 0}, 16)
	f.Add([]byte{0, 3, 1, 2, 3, 0, 1, 9}, 16)
	f.Add([]byte{0xff, 0xff, 1}, 65535)
	f.Add([]byte{0, 200, 1}, 100)
	f.Add([]byte{}, 0)
	f.Fuzz(func(t *testing.T, data []byte, bufLen int) {
		bufLen = max(0, bufLen%(MaxFrameSize+1))
		r := bufio.NewReader(bytes.NewReader(data))
		buf := make([]byte, bufLen)
		for range len(data) + 1 {
			n, err := ReadFrame(r, buf)
			if err != nil {
				return
			}
			if n < 0 || n > len(buf) {
				t.Fatalf("ReadFrame: got n=%d for %d-byte buffer", n, len(buf))
			}
			// Re-encoding what was read must give the same bytes.
			var out bytes.Buffer
			if err := WriteFrame(&out, buf[:n]); err != nil {
				t.Fatal(err)
			}
			if out.Len() != n+2 {
				t.Fatalf("re-encoded frame: got %d bytes, want %d", out.Len(), n+2)
			}
		}
	})
}

func TestValidMessage(t *testing.T) {
	msg := func(typ byte, n int) []byte { b := make([]byte, n); b[0] = typ; return b }
	tests := []struct {
		name string
		in   []byte
		want bool
	}{
		{"initiation", msg(1, 148), true},
		{"initiation short", msg(1, 147), false},
		{"response", msg(2, 92), true},
		{"cookie", msg(3, 64), true},
		{"keepalive", msg(4, 32), true},
		{"transport", msg(4, 1452), true},
		{"transport short", msg(4, 31), false},
		{"type 5", msg(5, 64), false},
		{"high type bytes", append([]byte{4, 0, 0, 1}, make([]byte, 60)...), false},
		{"empty", nil, false},
	}
	for _, tt := range tests {
		if got := validMessage(tt.in); got != tt.want {
			t.Errorf("validMessage(%s): got %v, want %v", tt.name, got, tt.want)
		}
	}
}
