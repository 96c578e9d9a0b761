// Package accounts hashes and checks user passwords with argon2id (RFC 9106, OWASP's
// recommended parameters) in a self-describing PHC string, so parameters can be raised later
// without invalidating stored hashes.
package accounts

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// ErrMismatch means the password does not match the hash.
var ErrMismatch = errors.New("password does not match")

// Params are argon2id's cost parameters.
type Params struct {
	MemoryKiB   uint32
	Iterations  uint32
	Parallelism uint8
}

// DefaultParams follow OWASP's argon2id recommendation (19 MiB, 2 iterations, 1 lane).
var DefaultParams = Params{MemoryKiB: 19 * 1024, Iterations: 2, Parallelism: 1}

const (
	saltLen = 16
	keyLen  = 32
)

// MaxPasswordBytes bounds what is hashed, so a huge body cannot cost a huge hash.
const MaxPasswordBytes = 1024

// Hash returns the PHC string of password under p.
func Hash(password string, p Params) (string, error) {
	if len(password) > MaxPasswordBytes {
		return "", fmt.Errorf("password longer than %d bytes", MaxPasswordBytes)
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, p.Iterations, p.MemoryKiB, p.Parallelism, keyLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.MemoryKiB, p.Iterations,
		p.Parallelism, enc.EncodeToString(salt), enc.EncodeToString(key)), nil
}

// Verify checks password against a PHC string in constant time.
func Verify(password, phc string) error {
	if len(password) > MaxPasswordBytes {
		return ErrMismatch
	}
	p, salt, want, err := decodePHC(phc)
	if err != nil {
		return err
	}
	got := argon2.IDKey([]byte(password), salt, p.Iterations, p.MemoryKiB, p.Parallelism, uint32(len(want)))
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return ErrMismatch
	}
	return nil
}

// Bounds on what a stored hash may ask of Verify. argon2 panics on zero iterations, zero
// lanes or an empty key, and allocates MemoryKiB: a damaged or planted record must get an
// error, not a crash or a multi-gigabyte allocation on every login.
const (
	maxMemoryKiB  = 1 << 20 // 1 GiB
	maxIterations = 64
	minSaltLen    = 8
	maxSaltLen    = 64
	minKeyLen     = 16
	maxKeyLen     = 64
)

// decodePHC parses an argon2id PHC string and checks its parameters are within bounds.
func decodePHC(phc string) (p Params, salt, key []byte, err error) {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return p, nil, nil, errors.New("stored hash is not argon2id")
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return p, nil, nil, errors.New("stored hash has an unsupported argon2 version")
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.MemoryKiB, &p.Iterations, &p.Parallelism); err != nil {
		return p, nil, nil, fmt.Errorf("stored hash parameters: %w", err)
	}
	if p.Iterations < 1 || p.Iterations > maxIterations || p.Parallelism < 1 || p.MemoryKiB > maxMemoryKiB {
		return p, nil, nil, fmt.Errorf("stored hash parameters out of range: m=%d, t=%d, p=%d", p.MemoryKiB, p.Iterations, p.Parallelism)
	}
	enc := base64.RawStdEncoding
	salt, err = enc.DecodeString(parts[4])
	if err != nil || len(salt) < minSaltLen || len(salt) > maxSaltLen {
		return p, nil, nil, errors.New("stored hash salt is not base64 of 8 to 64 bytes")
	}
	key, err = enc.DecodeString(parts[5])
	if err != nil || len(key) < minKeyLen || len(key) > maxKeyLen {
		return p, nil, nil, errors.New("stored hash key is not base64 of 16 to 64 bytes")
	}
	return p, salt, key, nil
}
