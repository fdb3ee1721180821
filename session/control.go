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
	"net/url"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/version"
)

// ControlError is a non-2xx answer of the gateway's control API.
type ControlError struct {
	Status int
	Msg    string
}

func (e *ControlError) Error() string { return e.Msg }

// isUnknownPeer reports the gateway's 412: it does not know this
// workstation's key (register again, then retry).
func isUnknownPeer(err error) bool {
	var ce *ControlError
	return errors.As(err, &ce) && ce.Status == http.StatusPreconditionFailed
}

// isConflict reports a 409 from the gateway.
func isConflict(err error) bool {
	var ce *ControlError
	return errors.As(err, &ce) && ce.Status == http.StatusConflict
}

// controlClient is the typed client of the gateway's control API. Each call
// opens its own connection with dial (a port-forward to the current gateway
// pod), so it keeps working across pod replacements and needs no state.
type controlClient struct {
	dial func(ctx context.Context) (net.Conn, error)
	// where names the endpoint in errors ("gateway pod ns/name").
	where func() string
}

// controlTimeout bounds one control call.
const controlTimeout = 15 * time.Second

func (c controlClient) Register(ctx context.Context, publicKey string) (api.RegisterResponse, error) {
	var rr api.RegisterResponse
	err := c.call(ctx, http.MethodPost, "/v1/register", api.RegisterRequest{PublicKey: publicKey, Version: version.Version}, &rr)
	return rr, err
}

func (c controlClient) AddIntercept(ctx context.Context, req api.InterceptRequest) (api.Intercept, error) {
	var it api.Intercept
	err := c.call(ctx, http.MethodPost, "/v1/intercepts", req, &it)
	return it, err
}

func (c controlClient) RenewIntercepts(ctx context.Context, req api.RenewRequest) (api.RenewResponse, error) {
	var rr api.RenewResponse
	err := c.call(ctx, http.MethodPost, "/v1/intercepts/renew", req, &rr)
	return rr, err
}

func (c controlClient) LeaveIntercept(ctx context.Context, req api.LeaveRequest) (api.LeaveResponse, error) {
	var lr api.LeaveResponse
	err := c.call(ctx, http.MethodDelete, "/v1/intercepts", req, &lr)
	return lr, err
}

func (c controlClient) ListIntercepts(ctx context.Context, namespace string) ([]api.Intercept, error) {
	var live []api.Intercept
	err := c.call(ctx, http.MethodGet, "/v1/intercepts?namespace="+url.QueryEscape(namespace), nil, &live)
	return live, err
}

// call sends in as JSON and decodes the answer into out (nil = drop it).
func (c controlClient) call(ctx context.Context, method, path string, in, out any) error {
	hc := &http.Client{Timeout: controlTimeout, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return c.dial(ctx) },
		DisableKeepAlives: true,
	}}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://gateway"+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %s %s: %w", c.where(), method, path, err)
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
		return fmt.Errorf("gateway %s %s: decode answer: %w", method, path, err)
	}
	return nil
}
