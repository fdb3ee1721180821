package tunnel

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"

	"golang.org/x/crypto/curve25519"
)

// proofLabel separates registration proofs from any other use of the
// static Diffie-Hellman secret.
const proofLabel = "bridgetun register v1\x00"

// RegistrationProof proves to the gateway that the registrant holds the
// private part of its public key, bound to binding (the caller's identity
// proof, e.g. a hash of the bearer token it authenticates with): an
// HMAC-SHA256 keyed with X25519(private, gatewayPublic). The gateway
// computes the same secret from its private key and the registrant's
// public key, so nobody can register a key it cannot use, and a proof is
// worthless to another identity.
func RegistrationProof(private, gatewayPublic Key, binding []byte) ([]byte, error) {
	secret, err := curve25519.X25519(private[:], gatewayPublic[:])
	if err != nil {
		return nil, fmt.Errorf("registration proof: %w", err)
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(proofLabel))
	m.Write(binding)
	return m.Sum(nil), nil
}

// VerifyRegistrationProof checks a RegistrationProof on the gateway's side.
func VerifyRegistrationProof(gatewayPrivate, public Key, binding, proof []byte) error {
	want, err := RegistrationProof(gatewayPrivate, public, binding)
	if err != nil {
		return err
	}
	if !hmac.Equal(want, proof) {
		return errors.New("registration proof does not match: the caller does not hold this key's private part, or it was made for another identity")
	}
	return nil
}
