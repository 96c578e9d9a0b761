package sign

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"telematics/pkg/protocol"
)

const (
	linkVIN      = "WVWZZZ1JZXW000001"
	otherLinkVIN = "WVWZZZ1JZXW000002"
)

var linkNow = time.UnixMilli(1_760_000_000_000)

// linkFixture is a gateway, a car's link identity it certified, a phone's challenge request
// and the car's genuine answer.
type linkFixture struct {
	gw    *Signer
	key   ed25519.PrivateKey
	cert  protocol.Envelope
	req   protocol.ChallengeRequest
	ch    protocol.Challenge
	trust []*ecdsa.PublicKey
}

func newLinkFixture(t testing.TB) linkFixture {
	t.Helper()
	gw, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	seed, cert, err := NewLinkIdentity(gw, linkVIN, linkNow.Add(-time.Hour), linkNow.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ParseLinkKey(seed)
	if err != nil {
		t.Fatal(err)
	}
	x := linkFixture{gw: gw, key: key, cert: cert, trust: []*ecdsa.PublicKey{gw.Public()},
		req: protocol.ChallengeRequest{V: 1, KeyID: "phone-key-id", PhoneNonce: protocol.EncodeB64([]byte("0123456789abcdef"))},
		ch:  protocol.Challenge{V: 1, VIN: linkVIN, Nonce: "car-nonce", ExpiresAtMs: linkNow.UnixMilli() + 10_000}}
	x.ch.Proof, err = ProveCar(key, cert, x.req, x.ch)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestVerifyCarProof(t *testing.T) {
	x := newLinkFixture(t)
	if err := VerifyCarProof(x.trust, linkVIN, x.req, x.ch, linkNow); err != nil {
		t.Fatalf("genuine proof: %v", err)
	}
	certify := func(gw *Signer, vin string, key ed25519.PrivateKey, from, until time.Time) protocol.Envelope {
		c, err := CertifyLinkKey(gw, vin, key.Public().(ed25519.PublicKey), from, until)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	_, stranger, _ := ed25519.GenerateKey(nil)
	otherGW, _ := Generate()
	withProof := func(key ed25519.PrivateKey, cert protocol.Envelope) protocol.Challenge {
		ch := x.ch
		p, err := ProveCar(key, cert, x.req, ch)
		if err != nil {
			t.Fatal(err)
		}
		ch.Proof = p
		return ch
	}
	tampered := x.ch
	tamperedProof := *x.ch.Proof
	doc, _ := tamperedProof.Cert.DocBytes()
	tamperedProof.Cert.Doc = protocol.EncodeB64([]byte(strings.Replace(string(doc), linkVIN, otherLinkVIN, 1)))
	tampered.Proof = &tamperedProof

	tests := []struct {
		name   string
		trust  []*ecdsa.PublicKey
		vin    string
		req    func(protocol.ChallengeRequest) protocol.ChallengeRequest
		ch     protocol.Challenge
		now    time.Time
		reason protocol.Reason
	}{
		{"no proof", x.trust, linkVIN, nil, protocol.Challenge{V: 1, VIN: linkVIN, Nonce: "n"}, linkNow, protocol.ReasonUnauthenticated},
		{"no trusted key", nil, linkVIN, nil, x.ch, linkNow, protocol.ReasonUnauthenticated},
		{"challenge for another car", x.trust, otherLinkVIN, nil, x.ch, linkNow, protocol.ReasonForbidden},
		{"certification by another gateway", x.trust, linkVIN, nil, withProof(stranger, certify(otherGW, linkVIN, stranger, linkNow, linkNow.Add(time.Hour))), linkNow, protocol.ReasonSignatureInvalid},
		{"certification changed after signing", x.trust, linkVIN, nil, tampered, linkNow, protocol.ReasonSignatureInvalid},
		{"certification of another car", x.trust, linkVIN, nil, withProof(stranger, certify(x.gw, otherLinkVIN, stranger, linkNow, linkNow.Add(time.Hour))), linkNow, protocol.ReasonForbidden},
		{"expired certification", x.trust, linkVIN, nil, x.ch, linkNow.Add(time.Hour + time.Millisecond), protocol.ReasonKeyExpired},
		{"certification from the future", x.trust, linkVIN, nil, x.ch, linkNow.Add(-time.Hour - LinkCertSkew - time.Millisecond), protocol.ReasonKeyExpired},
		{"another key signed the proof", x.trust, linkVIN, nil, withProof(stranger, x.cert), linkNow, protocol.ReasonSignatureInvalid},
		{"answer to another phone nonce (replay)", x.trust, linkVIN, func(r protocol.ChallengeRequest) protocol.ChallengeRequest {
			r.PhoneNonce = protocol.EncodeB64([]byte("fedcba9876543210"))
			return r
		}, x.ch, linkNow, protocol.ReasonSignatureInvalid},
		{"answer to another phone key", x.trust, linkVIN, func(r protocol.ChallengeRequest) protocol.ChallengeRequest {
			r.KeyID = "another-key"
			return r
		}, x.ch, linkNow, protocol.ReasonSignatureInvalid},
		{"proof moved to another challenge nonce", x.trust, linkVIN, nil, func() protocol.Challenge { ch := x.ch; ch.Nonce = "other"; return ch }(), linkNow, protocol.ReasonSignatureInvalid},
		{"malformed signature", x.trust, linkVIN, nil, func() protocol.Challenge {
			ch, p := x.ch, *x.ch.Proof
			p.Sig = "AAAA"
			ch.Proof = &p
			return ch
		}(), linkNow, protocol.ReasonBadRequest},
		{"malformed certification", x.trust, linkVIN, nil, func() protocol.Challenge {
			ch, p := x.ch, *x.ch.Proof
			p.Cert.Doc = "!!"
			ch.Proof = &p
			return ch
		}(), linkNow, protocol.ReasonBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := x.req
			if tc.req != nil {
				req = tc.req(req)
			}
			err := VerifyCarProof(tc.trust, tc.vin, req, tc.ch, tc.now)
			if !errors.Is(err, ErrCarNotProven) || protocol.ReasonOf(err) != tc.reason {
				t.Fatalf("got %v (reason %s), want %s", err, protocol.ReasonOf(err), tc.reason)
			}
		})
	}
	// The last instant of validity still counts; a second gateway key in the trust set works
	// (a rotation).
	if err := VerifyCarProof(append([]*ecdsa.PublicKey{otherGW.Public()}, x.trust...), linkVIN, x.req, x.ch, linkNow.Add(time.Hour)); err != nil {
		t.Fatalf("at expiry, with two trusted keys: %v", err)
	}
}

func TestLinkIdentity(t *testing.T) {
	x := newLinkFixture(t)
	seed := protocol.EncodeB64(x.key.Seed())
	if _, err := LinkIdentity(protocol.Credentials{VIN: linkVIN, LinkKey: seed, LinkCert: &x.cert}); err != nil {
		t.Fatalf("matching key and certification: %v", err)
	}
	_, stranger, _ := ed25519.GenerateKey(nil)
	for name, creds := range map[string]protocol.Credentials{
		"no certification":        {VIN: linkVIN, LinkKey: seed},
		"no key":                  {VIN: linkVIN, LinkCert: &x.cert},
		"another vin":             {VIN: otherLinkVIN, LinkKey: seed, LinkCert: &x.cert},
		"another key":             {VIN: linkVIN, LinkKey: protocol.EncodeB64(stranger.Seed()), LinkCert: &x.cert},
		"a key that is no seed":   {VIN: linkVIN, LinkKey: "c2hvcnQ", LinkCert: &x.cert},
		"a certification of junk": {VIN: linkVIN, LinkKey: seed, LinkCert: &protocol.Envelope{Doc: protocol.EncodeB64([]byte("{}"))}},
	} {
		if _, err := LinkIdentity(creds); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := CertifyLinkKey(x.gw, linkVIN, x.key.Public().(ed25519.PublicKey), linkNow, linkNow); err == nil {
		t.Error("a certification valid for no time was made")
	}
}

// FuzzVerifyCarProof feeds a phone arbitrary answers to its challenge request (what any box on
// the link can send): never a panic, and never accepted unless the answer carries a proof that
// the certified key made for this very request.
func FuzzVerifyCarProof(f *testing.F) {
	x := newLinkFixture(f)
	genuine, _ := json.Marshal(x.ch)
	f.Add(genuine)
	f.Add([]byte(`{"v":1,"vin":"WVWZZZ1JZXW000001","nonce":"n","expires_at":1}`))
	f.Add([]byte(`{"v":1,"vin":"WVWZZZ1JZXW000001","nonce":"n","proof":{"cert":{"doc":"e30","sig":"","kid":""},"sig":""}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var ch protocol.Challenge
		if protocol.Decode(body, &ch) != nil {
			return
		}
		err := VerifyCarProof(x.trust, linkVIN, x.req, ch, linkNow)
		if err == nil {
			if ch.Proof == nil || ch.VIN != linkVIN {
				t.Fatalf("accepted %s", body)
			}
			// Only the genuine car's signature verifies: the fuzzer cannot forge Ed25519, so an
			// accepted answer is the genuine one, maybe re-encoded.
			if ch.Nonce != x.ch.Nonce || ch.ExpiresAtMs != x.ch.ExpiresAtMs {
				t.Fatalf("accepted a proof for another challenge: %s", body)
			}
			return
		}
		if !errors.Is(err, ErrCarNotProven) || !protocol.ReasonOf(err).Valid() || protocol.ReasonOf(err) == protocol.ReasonInternal {
			t.Fatalf("refusal without ErrCarNotProven or a reason: %v", err)
		}
	})
}

// FuzzDecodeLinkCert decodes arbitrary certifications: no panic; an accepted one names a VIN
// and a 32-byte key, and its document is within the bound.
func FuzzDecodeLinkCert(f *testing.F) {
	x := newLinkFixture(f)
	f.Add(x.cert.Doc)
	f.Add(protocol.EncodeB64([]byte(`{"v":1,"vin":"WVWZZZ1JZXW000001","link_pub":"AAAA"}`)))
	f.Add("")
	f.Fuzz(func(t *testing.T, doc string) {
		c, pub, raw, err := DecodeLinkCert(protocol.Envelope{Doc: doc})
		if err != nil {
			if protocol.ReasonOf(err) != protocol.ReasonBadRequest {
				t.Fatalf("refusal %v is not bad_request", err)
			}
			return
		}
		if !protocol.ValidVIN(c.VIN) || len(pub) != ed25519.PublicKeySize || len(raw) > protocol.MaxLinkCertBytes {
			t.Fatalf("accepted %q: %+v", doc, c)
		}
	})
}

// BenchmarkCarProof is what the car proof adds to one local-link exchange: the car's proof
// (one Ed25519 signature) and the phone's check (an ES256 and an Ed25519 verification).
//
//	go test -run XXX -bench CarProof ./pkg/sign/
func BenchmarkCarProof(b *testing.B) {
	x := newLinkFixture(b)
	b.Run("prove", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ProveCar(x.key, x.cert, x.req, x.ch); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("verify", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := VerifyCarProof(x.trust, linkVIN, x.req, x.ch, linkNow); err != nil {
				b.Fatal(err)
			}
		}
	})
}
