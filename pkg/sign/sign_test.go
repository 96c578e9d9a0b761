package sign

import (
	"crypto/ecdsa"
	"errors"
	"testing"

	"telematics/pkg/protocol"
)

// VerifyAny: the document for the first key that verifies; signature_invalid for no keys, for
// only other keys, and for a tampered document.
func TestVerifyAny(t *testing.T) {
	a, _ := Generate()
	b, _ := Generate()
	env, err := b.Sign([]byte(`{"v":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if doc, err := VerifyAny(env, []*ecdsa.PublicKey{a.Public(), b.Public()}); err != nil || string(doc) != `{"v":1}` {
		t.Fatalf("second key: %q %v", doc, err)
	}
	tampered := env
	tampered.Doc = protocol.EncodeB64([]byte(`{"v":2}`))
	for name, c := range map[string]struct {
		env  protocol.Envelope
		keys []*ecdsa.PublicKey
	}{
		"no keys":       {env, nil},
		"another key":   {env, []*ecdsa.PublicKey{a.Public()}},
		"tampered":      {tampered, []*ecdsa.PublicKey{a.Public(), b.Public()}},
		"nil key first": {env, []*ecdsa.PublicKey{nil}},
	} {
		doc, err := VerifyAny(c.env, c.keys)
		if doc != nil || protocol.ReasonOf(err) != protocol.ReasonSignatureInvalid {
			t.Errorf("%s: %q %v, want a signature_invalid refusal", name, doc, err)
		}
	}
	if _, err := VerifyAny(env, nil); !errors.Is(err, ErrNoTrustedKey) {
		t.Errorf("no keys: %v", err)
	}
}
