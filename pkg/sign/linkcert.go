package sign

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"telematics/pkg/protocol"
)

// A car's link identity: an Ed25519 key made for the car when it is provisioned, and the
// gateway's certification (protocol.LinkCert) that its public half belongs to the car's VIN.
// The car proves itself on the local link with it (ProveCar); a phone checks the proof
// (VerifyCarProof) before it signs any command for the car. See protocol.CarProof.

// ErrCarNotProven is wrapped by every refusal of VerifyCarProof: the car on the link did not
// prove that it is the car the phone means, so the phone sends it nothing signed.
var ErrCarNotProven = errors.New("the car did not prove its identity")

// LinkCertSkew is how far ahead of the verifier's clock a certification's issued_at may lie
// (the gateway's clock and a phone's are not the same clock).
const LinkCertSkew = 5 * time.Minute

// NewLinkIdentity makes car vin's link key and certifies it with the gateway key gw, valid from
// issuedAt to expiresAt. It returns the private seed (base64url) and the signed certification,
// as protocol.Credentials carries them.
func NewLinkIdentity(gw *Signer, vin string, issuedAt, expiresAt time.Time) (seed string, cert protocol.Envelope, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", protocol.Envelope{}, fmt.Errorf("generate link key: %w", err)
	}
	cert, err = CertifyLinkKey(gw, vin, pub, issuedAt, expiresAt)
	if err != nil {
		return "", protocol.Envelope{}, err
	}
	return protocol.EncodeB64(priv.Seed()), cert, nil
}

// CertifyLinkKey signs with gw the certification that pub is car vin's link key.
func CertifyLinkKey(gw *Signer, vin string, pub ed25519.PublicKey, issuedAt, expiresAt time.Time) (protocol.Envelope, error) {
	if !protocol.ValidVIN(vin) || len(pub) != ed25519.PublicKeySize || !expiresAt.After(issuedAt) {
		return protocol.Envelope{}, errors.New("certify link key: malformed vin, key or validity")
	}
	return gw.Seal(protocol.LinkCert{V: protocol.Version, VIN: vin, LinkPub: protocol.EncodeB64(pub),
		IssuedAtMs: issuedAt.UnixMilli(), ExpiresAtMs: expiresAt.UnixMilli()})
}

// ParseLinkKey decodes a link key's private seed (base64url, 32 bytes).
func ParseLinkKey(seed string) (ed25519.PrivateKey, error) {
	b, err := protocol.DecodeB64(seed)
	if err != nil || len(b) != ed25519.SeedSize {
		return nil, errors.New("link key is not a base64url Ed25519 seed of 32 bytes")
	}
	return ed25519.NewKeyFromSeed(b), nil
}

// DecodeLinkCert decodes a certification without checking its signature: bounded, well-formed,
// version 1, a VIN and a 32-byte key (bad_request otherwise). It returns the document's exact
// bytes too (a car proof binds them).
func DecodeLinkCert(env protocol.Envelope) (protocol.LinkCert, ed25519.PublicKey, []byte, error) {
	var c protocol.LinkCert
	if len(env.Doc) > base64.RawURLEncoding.EncodedLen(protocol.MaxLinkCertBytes) {
		return c, nil, nil, protocol.Refuse(protocol.ReasonBadRequest, "link certification over %d bytes", protocol.MaxLinkCertBytes)
	}
	doc, err := env.DocBytes()
	if err != nil {
		return c, nil, nil, err
	}
	if err := json.Unmarshal(doc, &c); err != nil {
		return c, nil, nil, protocol.Refuse(protocol.ReasonBadRequest, "link certification is not JSON: %v", err)
	}
	if c.V != protocol.Version || !protocol.ValidVIN(c.VIN) {
		return c, nil, nil, protocol.Refuse(protocol.ReasonBadRequest, "link certification of version %d for %q", c.V, c.VIN)
	}
	pub, err := protocol.DecodeB64(c.LinkPub)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return c, nil, nil, protocol.Refuse(protocol.ReasonBadRequest, "link certification carries no Ed25519 key")
	}
	return c, ed25519.PublicKey(pub), doc, nil
}

// LinkIdentity checks that creds' link key and certification belong together and to creds.VIN,
// and returns the key. It does not check the certification's signature or validity: that is
// the phone's business, and the car cannot do better than present what it was given.
func LinkIdentity(creds protocol.Credentials) (ed25519.PrivateKey, error) {
	if creds.LinkCert == nil {
		return nil, errors.New("no link_cert beside the link_key")
	}
	key, err := ParseLinkKey(creds.LinkKey)
	if err != nil {
		return nil, err
	}
	cert, pub, _, err := DecodeLinkCert(*creds.LinkCert)
	if err != nil {
		return nil, fmt.Errorf("link_cert: %w", err)
	}
	if cert.VIN != creds.VIN {
		return nil, fmt.Errorf("link_cert is for %s", cert.VIN)
	}
	if !pub.Equal(key.Public()) {
		return nil, errors.New("link_cert certifies another key than link_key")
	}
	return key, nil
}

// ProveCar answers challenge ch to the request req with the car's link key and certification:
// the proof a phone checks with VerifyCarProof. The request's phone nonce must have passed
// protocol.CheckPhoneNonce.
func ProveCar(key ed25519.PrivateKey, cert protocol.Envelope, req protocol.ChallengeRequest, ch protocol.Challenge) (*protocol.CarProof, error) {
	doc, err := cert.DocBytes()
	if err != nil {
		return nil, err
	}
	msg := protocol.CarProofMessage(ch.VIN, req.KeyID, req.PhoneNonce, ch.Nonce, ch.ExpiresAtMs, doc)
	return &protocol.CarProof{Cert: cert, Sig: protocol.EncodeB64(ed25519.Sign(key, msg))}, nil
}

// VerifyCarProof checks that the answer ch to the phone's challenge request req proves that
// the link is car vin: ch names vin; its proof carries a certification signed by one of the
// gateway keys trusted, for vin, valid at now; and the certified link key signed
// protocol.CarProofMessage over this request's phone nonce and key id and ch's nonce. Each
// refusal wraps ErrCarNotProven, with the reason: unauthenticated (no proof: a car without a
// certification, or an impostor that has none), bad_request (a malformed proof),
// signature_invalid (a certification no trusted gateway key signed, or a proof the certified
// key did not sign for this exchange: another car's key, a replayed answer), forbidden (a
// certification or challenge for another VIN), key_expired (a certification not valid now).
func VerifyCarProof(trusted []*ecdsa.PublicKey, vin string, req protocol.ChallengeRequest, ch protocol.Challenge, now time.Time) error {
	refuse := func(r protocol.Reason, format string, args ...any) error {
		return &protocol.Refusal{Reason: r, Err: fmt.Errorf("%w: "+format, append([]any{ErrCarNotProven}, args...)...)}
	}
	switch {
	case ch.VIN != vin:
		return refuse(protocol.ReasonForbidden, "the link answered as car %q, not %s", ch.VIN, vin)
	case ch.Proof == nil:
		return refuse(protocol.ReasonUnauthenticated, "it presented no certification from the gateway (a car provisioned before link certification needs new credentials: gateway admin vehicle reissue %s)", vin)
	case len(trusted) == 0:
		return refuse(protocol.ReasonUnauthenticated, "the phone knows no gateway key to check it with (log in once)")
	}
	cert, pub, doc, err := DecodeLinkCert(ch.Proof.Cert)
	if err != nil {
		return refuse(protocol.ReasonOf(err), "%v", err)
	}
	if _, err := VerifyAny(ch.Proof.Cert, trusted); err != nil {
		return refuse(protocol.ReasonSignatureInvalid, "its certification is not signed by the gateway")
	}
	nowMs := now.UnixMilli()
	switch {
	case cert.VIN != vin:
		return refuse(protocol.ReasonForbidden, "its certification is for car %s, not %s", cert.VIN, vin)
	case nowMs > cert.ExpiresAtMs:
		return refuse(protocol.ReasonKeyExpired, "its certification expired at %s (the car needs new credentials)", time.UnixMilli(cert.ExpiresAtMs).UTC().Format(time.RFC3339))
	case cert.IssuedAtMs > nowMs+LinkCertSkew.Milliseconds():
		return refuse(protocol.ReasonKeyExpired, "its certification is not valid before %s", time.UnixMilli(cert.IssuedAtMs).UTC().Format(time.RFC3339))
	}
	sig, err := protocol.DecodeB64(ch.Proof.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return refuse(protocol.ReasonBadRequest, "its proof signature is not %d bytes of base64url", ed25519.SignatureSize)
	}
	msg := protocol.CarProofMessage(vin, req.KeyID, req.PhoneNonce, ch.Nonce, ch.ExpiresAtMs, doc)
	if !ed25519.Verify(pub, msg, sig) {
		return refuse(protocol.ReasonSignatureInvalid, "its proof does not verify with the certified link key for this phone's challenge (another car's key, or a replayed answer)")
	}
	return nil
}
