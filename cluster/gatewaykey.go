package cluster

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"
)

// GatewayPrivateKey returns the installed gateway's WireGuard private key,
// or one made by generate when its Secret (or the key in it) does not
// exist. Any other error reading the Secret is returned: a transient API
// error must never rotate the key under every workstation that shares the
// gateway.
func GatewayPrivateKey(ctx context.Context, client kubernetes.Interface, ns string, generate func() (string, error)) (key string, created bool, err error) {
	key, err = ReadGatewaySecret(ctx, client, ns)
	switch {
	case err == nil:
		return key, false, nil
	case errors.Is(err, ErrGatewayNotInstalled):
		if key, err = generate(); err != nil {
			return "", false, fmt.Errorf("generate the gateway key: %w", err)
		}
		return key, true, nil
	default:
		return "", false, fmt.Errorf("%w: the gateway key is kept, try again (a new key would cut off every workstation on this gateway)", err)
	}
}
