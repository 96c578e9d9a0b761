package twofa

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"strings"
)

// Recovery codes: RecoveryCodeCount per enrollment, each 80 random bits written as 16
// lower-case base32 characters in groups of four ("abcd-efgh-ijkm-nop2"). With 80 bits of
// entropy a plain SHA-256 is enough to keep them safe at rest (a slow hash like argon2id
// matters for low-entropy passwords, not here); the user name is hashed in so that equal
// hashes in two users' records say nothing.
const (
	RecoveryCodeCount = 10
	recoveryBytes     = 10 // 80 bits
	recoveryChars     = 16 // base32 of 10 bytes, no padding
)

var b32Lower = strings.ToLower("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")

// newRecoveryCodes returns RecoveryCodeCount fresh codes for display and their hashes for
// storage.
func newRecoveryCodes(user string) (codes []string, hashes [][]byte, err error) {
	raw := make([]byte, recoveryBytes)
	for range RecoveryCodeCount {
		if _, err := io.ReadFull(rand.Reader, raw); err != nil {
			return nil, nil, fmt.Errorf("generate recovery code: %w", err)
		}
		c := strings.ToLower(b32NoPad.EncodeToString(raw))
		codes = append(codes, c[0:4]+"-"+c[4:8]+"-"+c[8:12]+"-"+c[12:16])
		hashes = append(hashes, recoveryHash(user, c))
	}
	clear(raw)
	return codes, hashes, nil
}

// normalizeRecoveryCode accepts a code as users type it (any case, with or without dashes
// and spaces) and returns its 16 canonical characters, or ok=false.
func normalizeRecoveryCode(code string) (string, bool) {
	if len(code) > 64 {
		return "", false
	}
	var b strings.Builder
	b.Grow(recoveryChars)
	for i := 0; i < len(code); i++ {
		c := code[i]
		switch {
		case c == '-' || c == ' ':
			continue
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		}
		if strings.IndexByte(b32Lower, c) < 0 {
			return "", false
		}
		b.WriteByte(c)
	}
	if b.Len() != recoveryChars {
		return "", false
	}
	return b.String(), true
}

func recoveryHash(user, normalized string) []byte {
	h := sha256.New()
	h.Write([]byte("telematics/twofa/recovery/v1\x00"))
	h.Write([]byte(user))
	h.Write([]byte{0})
	h.Write([]byte(normalized))
	return h.Sum(nil)
}

// matchRecovery returns the index of code's hash among hashes, or -1. Every hash is compared,
// in constant time.
func matchRecovery(hashes [][]byte, user, code string) int {
	norm, ok := normalizeRecoveryCode(code)
	if !ok {
		return -1
	}
	h := recoveryHash(user, norm)
	found := -1
	for i, stored := range hashes {
		eq := subtle.ConstantTimeCompare(h, stored)
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	return found
}

// VerifyRecovery spends one of the user's recovery codes in place of a TOTP code and returns
// how many are left. A wrong code counts towards the lockout like a wrong TOTP code; during
// a lockout it is refused as locked_out.
func (s *Service) VerifyRecovery(user, clientID, code string) (left int, err error) {
	o, err := s.verify(user, clientID, "", FactorRecovery, code)
	if err != nil {
		return 0, err
	}
	return o.left, nil
}
