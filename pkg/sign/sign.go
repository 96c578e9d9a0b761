// Package sign makes and checks the ECDSA P-256 signatures that carry trust in this system:
// gateway grants, whitelists and tokens, and phone-signed commands; and the Ed25519 link keys
// with which cars prove themselves on the local link (linkcert.go). ECDSA signatures are the JWS
// ES256 form (r||s, 64 bytes); keys are stored as PEM, private halves 0600.
package sign

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"

	"telematics/pkg/protocol"
)

// ErrBadSignature means a signature does not verify with the key it names.
var ErrBadSignature = errors.New("signature does not verify")

// ErrNoTrustedKey means there was no key to verify a signature with.
var ErrNoTrustedKey = errors.New("no trusted key to verify with")

// Signer holds a private key and its key id.
type Signer struct {
	priv *ecdsa.PrivateKey
	kid  string
}

// NewSigner wraps an existing P-256 private key.
func NewSigner(priv *ecdsa.PrivateKey) (*Signer, error) {
	if priv == nil || priv.Curve != elliptic.P256() {
		return nil, errors.New("signing key must be ECDSA P-256")
	}
	return &Signer{priv: priv, kid: KeyID(&priv.PublicKey)}, nil
}

// Generate makes a new P-256 signer.
func Generate() (*Signer, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate P-256 key: %w", err)
	}
	return NewSigner(priv)
}

// KID is the key id: a short digest of the public key, stable across restarts.
func (s *Signer) KID() string { return s.kid }

// Public returns the public half.
func (s *Signer) Public() *ecdsa.PublicKey { return &s.priv.PublicKey }

// Private returns the private key, for the JWT library.
func (s *Signer) Private() *ecdsa.PrivateKey { return s.priv }

// Sign signs doc as it is and returns the envelope.
func (s *Signer) Sign(doc []byte) (protocol.Envelope, error) {
	sig, err := SignRaw(s.priv, doc)
	if err != nil {
		return protocol.Envelope{}, err
	}
	return protocol.Envelope{Doc: protocol.EncodeB64(doc), Sig: protocol.EncodeB64(sig), KID: s.kid}, nil
}

// Seal marshals v to JSON and signs the bytes.
func (s *Signer) Seal(v any) (protocol.Envelope, error) {
	doc, err := json.Marshal(v)
	if err != nil {
		return protocol.Envelope{}, fmt.Errorf("marshal document: %w", err)
	}
	return s.Sign(doc)
}

// SignRaw returns the ES256 signature (r||s) of SHA-256(msg).
func SignRaw(priv *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, priv, h[:])
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}

// VerifyRaw checks an ES256 signature (r||s) of SHA-256(msg).
func VerifyRaw(pub *ecdsa.PublicKey, msg, sig []byte) bool {
	if pub == nil || len(sig) != 64 {
		return false
	}
	h := sha256.Sum256(msg)
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	return ecdsa.Verify(pub, h[:], r, s)
}

// Verify checks env against pub and returns the document's bytes. The kid is not trusted: the
// caller chooses the key.
func Verify(env protocol.Envelope, pub *ecdsa.PublicKey) ([]byte, error) {
	doc, err := env.DocBytes()
	if err != nil {
		return nil, err
	}
	sig, err := protocol.DecodeB64(env.Sig)
	if err != nil || !VerifyRaw(pub, doc, sig) {
		return nil, &protocol.Refusal{Reason: protocol.ReasonSignatureInvalid, Err: ErrBadSignature}
	}
	return doc, nil
}

// VerifyAny checks env against each of keys in turn and returns the document's bytes for the
// first that verifies. No keys, or none that verifies: a signature_invalid refusal.
func VerifyAny(env protocol.Envelope, keys []*ecdsa.PublicKey) ([]byte, error) {
	err := error(&protocol.Refusal{Reason: protocol.ReasonSignatureInvalid, Err: ErrNoTrustedKey})
	for _, k := range keys {
		doc, verr := Verify(env, k)
		if verr == nil {
			return doc, nil
		}
		err = verr
	}
	return nil, err
}

// KeyID derives a key id from a public key: the first 16 bytes of SHA-256 of its DER form.
func KeyID(pub *ecdsa.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return protocol.EncodeB64(sum[:16])
}

// EncodePublic returns the base64url DER (SPKI) form used on the wire.
func EncodePublic(pub *ecdsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	return protocol.EncodeB64(der), nil
}

// DecodePublic parses the base64url DER (SPKI) form of a P-256 public key.
func DecodePublic(s string) (*ecdsa.PublicKey, error) {
	der, err := protocol.DecodeB64(s)
	if err != nil {
		return nil, fmt.Errorf("public key is not base64url: %w", err)
	}
	return parsePublicDER(der)
}

func parsePublicDER(der []byte) (*ecdsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("public key is not ECDSA P-256")
	}
	return pub, nil
}

// PublicPEM returns the PEM form of a public key.
func PublicPEM(pub *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePublicPEM reads a PEM public key.
func ParsePublicPEM(b []byte) (*ecdsa.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("no PEM PUBLIC KEY block")
	}
	return parsePublicDER(blk.Bytes)
}

// LoadPublicPEM reads a PEM public key file.
func LoadPublicPEM(path string) (*ecdsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public key: %w", err)
	}
	pub, err := ParsePublicPEM(b)
	if err != nil {
		return nil, fmt.Errorf("public key %q: %w", path, err)
	}
	return pub, nil
}

// LoadOrCreate reads the PEM private key at path, or makes one and writes it 0600 (atomically,
// so a crash never leaves half a key). created reports which happened.
func LoadOrCreate(path string) (s *Signer, created bool, err error) {
	b, err := os.ReadFile(path)
	if err == nil {
		blk, _ := pem.Decode(b)
		if blk == nil || blk.Type != "EC PRIVATE KEY" {
			return nil, false, fmt.Errorf("signing key %q: no PEM EC PRIVATE KEY block", path)
		}
		priv, err := x509.ParseECPrivateKey(blk.Bytes)
		if err != nil {
			return nil, false, fmt.Errorf("signing key %q: %w", path, err)
		}
		s, err := NewSigner(priv)
		return s, false, err
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("read signing key: %w", err)
	}
	s, err = Generate()
	if err != nil {
		return nil, false, err
	}
	der, err := x509.MarshalECPrivateKey(s.priv)
	if err != nil {
		return nil, false, err
	}
	if err := WriteFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, false, err
	}
	return s, true, nil
}

// WriteFileAtomic writes data to a temporary file beside path with the given mode, syncs it and
// renames it into place.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create directory for %q: %w", path, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write %q: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("chmod %q: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %q: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %q: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %q: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename into %q: %w", path, err)
	}
	return nil
}
