package protocol

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
)

// Envelope carries a signed document as the exact bytes that were signed, base64url-encoded
// (no padding), beside its signature and the id of the key that made it. Nobody re-serializes
// a document before verifying it.
type Envelope struct {
	Doc string `json:"doc"`
	Sig string `json:"sig,omitempty"`
	KID string `json:"kid,omitempty"`
}

// b64 is the encoding of every binary field on the wire.
var b64 = base64.RawURLEncoding

// EncodeB64 encodes b as unpadded base64url.
func EncodeB64(b []byte) string { return b64.EncodeToString(b) }

// DecodeB64 decodes unpadded base64url.
func DecodeB64(s string) ([]byte, error) { return b64.DecodeString(s) }

// DocBytes returns the signed document's bytes.
func (e Envelope) DocBytes() ([]byte, error) {
	if e.Doc == "" {
		return nil, Refuse(ReasonBadRequest, "envelope has no doc")
	}
	b, err := b64.DecodeString(e.Doc)
	if err != nil {
		return nil, Refuse(ReasonBadRequest, "envelope doc is not base64url: %v", err)
	}
	return b, nil
}

// DocSHA256 is the hex SHA-256 of the document's exact bytes; a grant binds to a command by it.
func (e Envelope) DocSHA256() (string, error) {
	b, err := e.DocBytes()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// SignatureBytes is the length of an ES256 signature (r||s) on the wire, decoded.
const SignatureBytes = 64

// CheckSignatureShape refuses (signature_invalid) an envelope that cannot carry a valid
// signature: no key id or one that is no id, no signature or one that is not 64 bytes of
// base64url. It proves nothing about the signature; it lets a receiver turn away, before it
// remembers or looks anything up, what no key could have signed.
func (e Envelope) CheckSignatureShape() error {
	if e.KID == "" || e.Sig == "" {
		return Refuse(ReasonSignatureInvalid, "command is not signed by a phone key")
	}
	if !ValidID(e.KID) {
		return Refuse(ReasonSignatureInvalid, "kid is not a key id")
	}
	if len(e.Sig) != b64.EncodedLen(SignatureBytes) {
		return Refuse(ReasonSignatureInvalid, "signature is not %d bytes of base64url", SignatureBytes)
	}
	if _, err := b64.DecodeString(e.Sig); err != nil {
		return Refuse(ReasonSignatureInvalid, "signature is not base64url")
	}
	return nil
}
