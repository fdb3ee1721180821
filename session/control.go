package session

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
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
	// cred proves the user's identity on every call but Info; nil = none
	// (unit tests' fake gateways).
	cred credentials
}

// credentials is the user's identity for the gateway
// (*cluster.CredentialSource).
type credentials interface {
	Get(ctx context.Context) (cluster.CallerCredential, error)
	Invalidate()
}

// isWorkloadError reports the gateway's 422: it could not find or patch
// the workload (its message says why, in one line).
func isWorkloadError(err error) bool {
	var ce *ControlError
	return errors.As(err, &ce) && ce.Status == http.StatusUnprocessableEntity
}

// isForbidden reports a 403 from the gateway: not the caller's to do.
func isForbidden(err error) bool {
	var ce *ControlError
	return errors.As(err, &ce) && ce.Status == http.StatusForbidden
}

// controlTimeout bounds one control call.
const controlTimeout = 15 * time.Second

// Info asks for the gateway's public facts (its key); no identity needed.
func (c controlClient) Info(ctx context.Context) (api.InfoResponse, error) {
	var info api.InfoResponse
	err := c.callAs(ctx, http.MethodGet, "/v1/info", nil, &info, false)
	return info, err
}

// Register admits the workstation. prove makes the registration proof for
// the credential the call carries (nil = none).
func (c controlClient) Register(ctx context.Context, req api.RegisterRequest, prove func(binding []byte) ([]byte, error)) (api.RegisterResponse, error) {
	var rr api.RegisterResponse
	req.Version = version.Version
	body := func(cred cluster.CallerCredential) (any, error) {
		if prove == nil {
			return req, nil
		}
		p, err := prove(cred.Binding())
		if err != nil {
			return nil, err
		}
		r := req
		r.Proof = base64.StdEncoding.EncodeToString(p)
		return r, nil
	}
	err := c.callWith(ctx, http.MethodPost, "/v1/register", body, &rr, true)
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

func (c controlClient) RestoreWorkload(ctx context.Context, req api.RestoreRequest) (api.RestoreResponse, error) {
	var rr api.RestoreResponse
	err := c.call(ctx, http.MethodPost, "/v1/workloads/restore", req, &rr)
	return rr, err
}

func (c controlClient) ListIntercepts(ctx context.Context, namespace string) ([]api.Intercept, error) {
	var live []api.Intercept
	err := c.call(ctx, http.MethodGet, "/v1/intercepts?namespace="+url.QueryEscape(namespace), nil, &live)
	return live, err
}

// call sends in as JSON with the user's credential and decodes the answer
// into out (nil = drop it).
func (c controlClient) call(ctx context.Context, method, path string, in, out any) error {
	return c.callAs(ctx, method, path, in, out, true)
}

func (c controlClient) callAs(ctx context.Context, method, path string, in, out any, identified bool) error {
	return c.callWith(ctx, method, path, func(cluster.CallerCredential) (any, error) { return in, nil }, out, identified)
}

// callWith builds the body for the credential it presents; a 401 (the
// gateway restarted and forgot an identity CSR, or a token expired) makes
// it fetch the credential again and retry once.
func (c controlClient) callWith(ctx context.Context, method, path string, in func(cluster.CallerCredential) (any, error), out any, identified bool) error {
	for attempt := 0; ; attempt++ {
		var cred cluster.CallerCredential
		if identified && c.cred != nil {
			var err error
			if cred, err = c.cred.Get(ctx); err != nil {
				return fmt.Errorf("%s %s: %w", method, path, err)
			}
		}
		body, err := in(cred)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		err = c.send(ctx, method, path, cred, body, out)
		var ce *ControlError
		if attempt == 0 && identified && c.cred != nil && errors.As(err, &ce) && ce.Status == http.StatusUnauthorized {
			c.cred.Invalidate()
			continue
		}
		return err
	}
}

func (c controlClient) send(ctx context.Context, method, path string, cred cluster.CallerCredential, in, out any) error {
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
	if cred != (cluster.CallerCredential{}) {
		cred.Apply(req.Header)
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
