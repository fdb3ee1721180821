package tunnel

import "testing"

func TestRegistrationProof(t *testing.T) {
	gw, _ := GenerateKey()
	alice, _ := GenerateKey()
	mallory, _ := GenerateKey()
	binding := []byte("alice-token-hash")
	proof, err := RegistrationProof(alice, gw.PublicKey(), binding)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyRegistrationProof(gw, alice.PublicKey(), binding, proof); err != nil {
		t.Fatalf("alice's own proof: %v", err)
	}
	if err := VerifyRegistrationProof(gw, alice.PublicKey(), []byte("mallory-token-hash"), proof); err == nil {
		t.Fatal("alice's proof accepted for another identity")
	}
	forged, _ := RegistrationProof(mallory, gw.PublicKey(), binding)
	if err := VerifyRegistrationProof(gw, alice.PublicKey(), binding, forged); err == nil {
		t.Fatal("a proof made without alice's private key accepted for her public key")
	}
}
