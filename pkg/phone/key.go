package phone

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"

	"telematics/pkg/sign"
)

// Errors of the phone key file; test for them with errors.Is.
var (
	// ErrNoKey means the phone has no key (no key file, or none given to the App): it cannot
	// sign commands until one is created and paired with a car.
	ErrNoKey = errors.New("this phone has no key")
	// ErrKeyExists means CreateKey found a key at the path and kept it: replacing a key
	// unpairs the phone from every car it was paired with (ReplaceKey does it on purpose).
	ErrKeyExists = errors.New("a phone key already exists")
	// ErrKeyExposed means the key file may be read or written by other users, so the key may
	// have leaked: LoadKey refuses it, as ssh refuses such an identity file.
	ErrKeyExposed = errors.New("phone key file is accessible by other users")
)

// maxKeyFileBytes bounds what LoadKey reads: a P-256 PEM key is about 230 bytes.
const maxKeyFileBytes = 16 << 10

// CreateKey makes a new ECDSA P-256 phone key and writes its private half, PEM, mode 0600, to
// path (atomically: a crash never leaves half a key). It refuses with ErrKeyExists when path
// already exists. Only the public half (sign.EncodePublic) and the key id (Signer.KID) are
// ever sent anywhere.
func CreateKey(path string) (*sign.Signer, error) {
	// Between this check and the rename a second process could create the file; the rename
	// then replaces it. Two simultaneous `key create` on one phone is not a case worth a lock.
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("%w: %s", ErrKeyExists, path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("phone key %s: %w", path, err)
	}
	return ReplaceKey(path)
}

// ReplaceKey is CreateKey that overwrites an existing key. The old key is gone for good: the
// cars it was paired with keep it on their whitelists until it is revoked.
func ReplaceKey(path string) (*sign.Signer, error) {
	s, err := sign.Generate()
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(s.Private())
	if err != nil {
		return nil, fmt.Errorf("encode phone key: %w", err)
	}
	if err := sign.WriteFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("write phone key: %w", err)
	}
	return s, nil
}

// LoadKey reads the phone key at path (PEM "EC PRIVATE KEY", or PKCS#8 "PRIVATE KEY" as
// openssl writes it). It refuses a file that group or others may access (ErrKeyExposed), and
// returns ErrNoKey when there is no file.
func LoadKey(path string) (*sign.Signer, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no key file %s", ErrNoKey, path)
	}
	if err != nil {
		return nil, fmt.Errorf("phone key: %w", err)
	}
	defer f.Close()
	// Stat the open file, not the path: what is checked is what is read.
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("phone key %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("phone key %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return nil, fmt.Errorf("%w: %s has mode %04o; it must be readable by you only: chmod 600 %s",
			ErrKeyExposed, path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read phone key %s: %w", path, err)
	}
	if len(b) > maxKeyFileBytes {
		return nil, fmt.Errorf("phone key %s is not a key (%d bytes or more)", path, maxKeyFileBytes)
	}
	priv, err := parsePrivatePEM(b)
	if err != nil {
		return nil, fmt.Errorf("phone key %s: %w", path, err)
	}
	return sign.NewSigner(priv)
}

func parsePrivatePEM(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	switch blk.Type {
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, err
		}
		ec, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, errors.New("not an ECDSA key")
		}
		return ec, nil
	}
	return nil, fmt.Errorf("PEM block %q is not a private key", blk.Type)
}
