package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/bridgetun/bridgetun/agent/api"
)

// Sightings returns a Config.Sightings for Service namespace/service: it
// reports a request to the gateway's open traces (POST
// /v1/traces/sightings at the relay, with the pod's token; the gateway
// checks that the pod backs the Service).
func (c *GatewayClient) Sightings(namespace, service string) func(ctx context.Context, routeAs string) error {
	return func(ctx context.Context, routeAs string) error {
		body, err := json.Marshal(api.TraceSighting{Namespace: namespace, Service: service, RouteAs: routeAs})
		if err != nil {
			return err
		}
		u := url.URL{Scheme: "http", Host: c.cfg.Addr, Path: "/v1/traces/sightings"}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("trace sighting of %s/%s: %w", namespace, service, err)
		}
		token, err := c.cfg.Token()
		if err != nil {
			return fmt.Errorf("trace sighting of %s/%s: %w", namespace, service, err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.http.Do(req)
		if err != nil {
			return fmt.Errorf("trace sighting of %s/%s to gateway %s: %w", namespace, service, c.cfg.Addr, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("trace sighting of %s/%s: gateway %s answered %s: %s", namespace, service, c.cfg.Addr, resp.Status, readSnippet(resp.Body))
		}
		return nil
	}
}
