package sign

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"telematics/pkg/protocol"
)

// fuzzKeys returns a P-256 key and the public keys of other kinds a stranger could upload.
func fuzzKeys(f *testing.F) (*Signer, [][]byte) {
	s, err := Generate()
	if err != nil {
		f.Fatal(err)
	}
	p256, _ := x509.MarshalPKIXPublicKey(s.Public())
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der384, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	return s, [][]byte{p256, der384, p256[:len(p256)-1], {0x30, 0x00}}
}

// FuzzDecodePublic parses the public key a phone uploads when it pairs (and a whitelist's keys
// and trust list): it never panics, accepts only P-256 keys, and an accepted key encodes back
// to a key that decodes to the same point.
func FuzzDecodePublic(f *testing.F) {
	_, ders := fuzzKeys(f)
	for _, d := range ders {
		f.Add(protocol.EncodeB64(d))
	}
	f.Add("not-a-key")
	f.Fuzz(func(t *testing.T, s string) {
		pub, err := DecodePublic(s)
		if err != nil {
			return
		}
		if pub.Curve != elliptic.P256() {
			t.Fatalf("accepted a key on %s", pub.Curve.Params().Name)
		}
		enc, err := EncodePublic(pub)
		if err != nil {
			t.Fatalf("accepted key does not encode: %v", err)
		}
		again, err := DecodePublic(enc)
		if err != nil || !again.Equal(pub) || KeyID(again) != KeyID(pub) || KeyID(pub) == "" {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzParsePublicPEM parses a PEM public key file (the broker's and the standalone tools'
// trusted gateway keys): no panic, P-256 only, and the PEM it writes back reads the same key.
func FuzzParsePublicPEM(f *testing.F) {
	_, ders := fuzzKeys(f)
	for _, d := range ders {
		f.Add(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: d}))
	}
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pub, err := ParsePublicPEM(b)
		if err != nil {
			return
		}
		if pub.Curve != elliptic.P256() {
			t.Fatalf("accepted a key on %s", pub.Curve.Params().Name)
		}
		out, err := PublicPEM(pub)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParsePublicPEM(out)
		if err != nil || !again.Equal(pub) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzVerifyEnvelope feeds arbitrary envelopes to Verify, the check in front of every signed
// document (whitelists, grants, car tokens, phone commands): no panic, a refusal is
// bad_request or signature_invalid, and an accepted document is exactly one the key signed.
func FuzzVerifyEnvelope(f *testing.F) {
	s, _ := fuzzKeys(f)
	signed := map[string]bool{}
	for _, doc := range [][]byte{[]byte(`{"v":1,"vin":"1HGCM82633A004352","version":3}`), []byte("{}"), {0}} {
		env, err := s.Sign(doc)
		if err != nil {
			f.Fatal(err)
		}
		signed[string(doc)] = true
		f.Add(env.Doc, env.Sig)
	}
	f.Add("e30", "")
	f.Add("", "AA")
	f.Fuzz(func(t *testing.T, doc, sig string) {
		got, err := Verify(protocol.Envelope{Doc: doc, Sig: sig, KID: s.KID()}, s.Public())
		if err != nil {
			switch protocol.ReasonOf(err) {
			case protocol.ReasonBadRequest, protocol.ReasonSignatureInvalid:
			default:
				t.Fatalf("refusal %v", err)
			}
			return
		}
		if !signed[string(got)] {
			t.Fatalf("accepted %q, which the key never signed", got)
		}
		if b, _ := protocol.DecodeB64(doc); !bytes.Equal(b, got) {
			t.Fatal("Verify returned other bytes than the envelope's doc")
		}
	})
}
