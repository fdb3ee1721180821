package session

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/bridgetun/bridgetun/cluster"
)

// ControlError is a non-2xx answer of the gateway's control API.
type ControlError struct {
	Status int
	Msg    string
}

func (e *ControlError) Error() string { return e.Msg }

// control calls the gateway's control API through a port-forward to its
// pod: method path with in as JSON, decoding the answer into out (nil = drop).
func (s *Session) control(ctx context.Context, method, path string, in, out any) error {
	dial := cluster.PortForwardDialer(s.conn.Config, s.conn.Client, s.gwNS, s.currentPod(), cluster.ControlPort)
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		DisableKeepAlives: true,
	}}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://gateway"+path, body)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("gateway pod %s/%s: %s %s: %w", s.gwNS, s.currentPod(), method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return &ControlError{Status: resp.StatusCode, Msg: string(bytes.TrimSpace(b))}
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("gateway %s %s: %w", method, path, err)
	}
	return nil
}

// isConflict reports a 409 from the gateway.
func isConflict(err error) bool {
	var ce *ControlError
	return errors.As(err, &ce) && ce.Status == http.StatusConflict
}
