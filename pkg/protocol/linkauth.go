package protocol

import (
	"crypto/sha256"
	"fmt"
)

// The car's side of the local-link handshake: before a phone signs anything for car VIN, the
// car proves that it is that car. Each car holds a link key (Ed25519) that the gateway made for
// it when it was provisioned, with the gateway's certification that the key is VIN's (LinkCert,
// signed like every gateway document). The phone sends a fresh random PhoneNonce with its
// challenge request; the car answers with its certification and its link key's signature over
// CarProofMessage, which binds the car's VIN, the phone key, the phone's nonce, the car's own
// nonce and the certification. See docs/PROTOCOL.md, "Local link: the car proves itself".

// LinkCert is the gateway's certification that the Ed25519 link key LinkPub belongs to car VIN,
// from IssuedAtMs to ExpiresAtMs (unix ms). It travels as an Envelope signed by the gateway's
// signing key (ES256), the key a phone learns at login (api.LoginResponse.GatewayKey).
type LinkCert struct {
	V           int    `json:"v"`
	VIN         string `json:"vin"`
	LinkPub     string `json:"link_pub"` // base64url of the raw 32-byte Ed25519 public key
	IssuedAtMs  int64  `json:"issued_at"`
	ExpiresAtMs int64  `json:"expires_at"`
}

// CarProof is the car's proof of identity in a Challenge: its certification as the gateway
// signed it, and Sig, its link key's Ed25519 signature (64 bytes, base64url) over
// CarProofMessage for this challenge.
type CarProof struct {
	Cert Envelope `json:"cert"`
	Sig  string   `json:"sig"`
}

// Bounds of the handshake's fields: what a stranger on the link can make either side read.
const (
	// PhoneNonceMinBytes and PhoneNonceMaxBytes bound the phone's nonce, decoded; phones send 16.
	PhoneNonceMinBytes = 16
	PhoneNonceMaxBytes = 32
	// MaxLinkCertBytes bounds a LinkCert document (about 200 bytes in practice).
	MaxLinkCertBytes = 1024
	// LinkKeyBytes is the size of a raw Ed25519 public key and of its private seed.
	LinkKeyBytes = 32
	// LinkSigBytes is the size of an Ed25519 signature.
	LinkSigBytes = 64
)

// CarProofMessage is what a car's link key signs to answer a challenge request: the car's VIN,
// the phone key that asked ("" for a request without a key id), the phone's nonce, the car's
// nonce and its expiry, and the SHA-256 of the certification document's exact bytes. A phone
// accepts the signature only over the nonce it has just made, so an answer recorded from the
// genuine car is worth nothing the next time.
func CarProofMessage(vin, keyID, phoneNonce, carNonce string, expiresAtMs int64, certDoc []byte) []byte {
	sum := sha256.Sum256(certDoc)
	return fmt.Appendf(nil, "telematics local-link car proof v1\n%s\n%s\n%s\n%s\n%d\n%s",
		vin, keyID, phoneNonce, carNonce, expiresAtMs, EncodeB64(sum[:]))
}

// CheckPhoneNonce refuses (bad_request) a phone nonce that is not PhoneNonceMinBytes to
// PhoneNonceMaxBytes of base64url.
func CheckPhoneNonce(s string) error {
	if len(s) < b64.EncodedLen(PhoneNonceMinBytes) || len(s) > b64.EncodedLen(PhoneNonceMaxBytes) {
		return Refuse(ReasonBadRequest, "phone_nonce must be %d to %d bytes of base64url", PhoneNonceMinBytes, PhoneNonceMaxBytes)
	}
	if _, err := b64.DecodeString(s); err != nil {
		return Refuse(ReasonBadRequest, "phone_nonce is not base64url")
	}
	return nil
}
