package twofa

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// KeySize is the length of the sealing key: AES-256.
const KeySize = 32

// ErrBadKey means a sealing key is not 32 bytes of base64, or its file is readable by others.
var ErrBadKey = errors.New("bad TOTP sealing key")

// Sizes of a sealed secret: a 12-byte GCM nonce, the secret (20 bytes as generated here; other
// lengths are accepted up to 64) and a 16-byte tag.
const (
	nonceSize     = 12
	tagSize       = 16
	minSealedSize = nonceSize + 10 + tagSize
	maxSealedSize = nonceSize + 64 + tagSize
)

// sealAAD binds a sealed secret to its user: a sealed value copied to another user's record
// fails to open. The prefix keeps these values apart from anything else sealed with the key.
func sealAAD(user string) []byte {
	return []byte("telematics/twofa/totp-secret/v1\x00" + user)
}

// ParseKey decodes a base64 (standard alphabet, padded or not) sealing key, as given in the
// configuration or the environment. The error never contains the key.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		key, err = base64.RawStdEncoding.DecodeString(s)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: not base64", ErrBadKey)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrBadKey, len(key), KeySize)
	}
	return key, nil
}

// EncodeKey is the text form ParseKey reads and LoadOrCreateKey writes.
func EncodeKey(key []byte) string { return base64.StdEncoding.EncodeToString(key) }

// LoadOrCreateKey reads the sealing key from path (base64 text, as ParseKey), or creates it
// with a fresh random key, mode 0600, if the file does not exist. The directory must exist. A
// key file that group or others may read or write is refused: anyone who can read both it and
// the database can read every TOTP secret.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := readKeyFile(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	key = make([]byte, KeySize)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		return nil, fmt.Errorf("generate TOTP sealing key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Another process created it between our read and our create: use theirs.
		return readKeyFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("create TOTP sealing key %q: %w", path, err)
	}
	_, err = f.WriteString(EncodeKey(key) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("write TOTP sealing key %q: %w", path, err)
	}
	return key, nil
}

func readKeyFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("TOTP sealing key %q: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %q has mode %v, want 0600 (chmod 600 it)", ErrBadKey, path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read TOTP sealing key %q: %w", path, err)
	}
	key, err := ParseKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("TOTP sealing key %q: %w", path, err)
	}
	return key, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrBadKey, len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// seal encrypts plain for user with a fresh random nonce.
func seal(aead cipher.AEAD, user string, plain []byte) ([]byte, error) {
	out := make([]byte, nonceSize, nonceSize+len(plain)+aead.Overhead())
	if _, err := io.ReadFull(rand.Reader, out); err != nil {
		return nil, fmt.Errorf("generate nonce: %w", err)
	}
	return aead.Seal(out, out, plain, sealAAD(user)), nil
}

// unseal reverses seal; it fails if sealed was made for another user, with another key, or
// was altered.
func unseal(aead cipher.AEAD, user string, sealed []byte) ([]byte, error) {
	if len(sealed) < nonceSize+aead.Overhead() {
		return nil, errors.New("sealed secret too short")
	}
	plain, err := aead.Open(nil, sealed[:nonceSize], sealed[nonceSize:], sealAAD(user))
	if err != nil {
		return nil, fmt.Errorf("open sealed secret of user %q (wrong key, or record moved or altered): %w", user, err)
	}
	return plain, nil
}
