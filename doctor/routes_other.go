//go:build !linux

package doctor

import (
	"errors"
	"net/netip"
)

// Routes and rules are read on Linux only for now; the route checks say
// so instead of guessing.
func osRoutes() ([]Route, error)           { return nil, errors.ErrUnsupported }
func osRules() ([]Rule, error)             { return nil, errors.ErrUnsupported }
func osRouteTo(netip.Addr) (string, error) { return "", errors.ErrUnsupported }
