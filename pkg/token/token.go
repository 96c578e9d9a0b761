// Package token issues and verifies the gateway's access tokens: ES256 JWTs with sub, role,
// exp, iat and jti. The broker verifies them with the gateway's public key alone, so it needs
// no database and keeps admitting cars while the gateway is down.
package token

import (
	"crypto/ecdsa"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"

	"telematics/pkg/clock"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// ErrInvalid means a token is malformed, tampered with, expired or signed by another key.
var ErrInvalid = errors.New("invalid token")

// Claims are the fields of an access token.
type Claims struct {
	Role protocol.Role `json:"role"`
	// Gen is an app token's generation: the gateway refuses a user's tokens of any other
	// generation than the user's current one (it moves on when the password changes or the
	// account is disabled, ending every token issued before).
	Gen uint64 `json:"gen,omitempty"`
	jwt.RegisteredClaims
}

// Issuer mints tokens with the gateway's signing key.
type Issuer struct {
	signer *sign.Signer
	clock  clock.Clock
}

// NewIssuer returns an issuer on clk (nil: the real clock).
func NewIssuer(s *sign.Signer, clk clock.Clock) *Issuer {
	return &Issuer{signer: s, clock: clock.Or(clk)}
}

// Issue signs a token for sub with role, valid for ttl.
func (i *Issuer) Issue(sub string, role protocol.Role, ttl time.Duration) (string, time.Time, error) {
	tok, _, exp, err := i.IssueID(sub, role, ttl)
	return tok, exp, err
}

// IssueID is Issue that also returns the token's id (its jti), for a caller that keeps track of
// which token is current (a car's credentials can be reissued, which retires the old token).
func (i *Issuer) IssueID(sub string, role protocol.Role, ttl time.Duration) (tok, jti string, exp time.Time, err error) {
	return i.IssueGen(sub, role, ttl, 0)
}

// IssueGen is IssueID for a token of generation gen (Claims.Gen).
func (i *Issuer) IssueGen(sub string, role protocol.Role, ttl time.Duration, gen uint64) (tok, jti string, exp time.Time, err error) {
	now := i.clock.Now()
	exp = now.Add(ttl)
	c := Claims{
		Role: role,
		Gen:  gen,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   sub,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(exp),
			ID:        newTokenID(i.signer.KID(), uuid.NewString()),
		},
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, c)
	t.Header["kid"] = i.signer.KID()
	s, err := t.SignedString(i.signer.Private())
	if err != nil {
		return "", "", time.Time{}, fmt.Errorf("sign token: %w", err)
	}
	return s, c.ID, exp, nil
}

// Verifier checks tokens against one or more trusted gateway public keys (more than one during
// a key rotation).
type Verifier struct {
	keys  []*ecdsa.PublicKey
	clock clock.Clock
}

// NewVerifier trusts the given keys; expiry is judged on clk (nil: the real clock).
func NewVerifier(clk clock.Clock, keys ...*ecdsa.PublicKey) *Verifier {
	return &Verifier{keys: keys, clock: clock.Or(clk)}
}

// Verify parses and checks a token: ES256 only, signed by a trusted key, not expired, with a
// subject and a known role.
func (v *Verifier) Verify(raw string) (*Claims, error) {
	if raw == "" || len(raw) > 4096 {
		return nil, ErrInvalid
	}
	var lastErr error
	for _, k := range v.keys {
		c := &Claims{}
		_, err := jwt.ParseWithClaims(raw, c, func(*jwt.Token) (any, error) { return k, nil },
			jwt.WithValidMethods([]string{"ES256"}),
			jwt.WithExpirationRequired(),
			jwt.WithTimeFunc(v.clock.Now),
		)
		if err != nil {
			lastErr = err
			continue
		}
		if c.Subject == "" {
			return nil, fmt.Errorf("%w: no subject", ErrInvalid)
		}
		switch c.Role {
		case protocol.RoleVehicle, protocol.RoleApp, protocol.RoleGateway, protocol.RoleAdmin:
		default:
			return nil, fmt.Errorf("%w: unknown role %q", ErrInvalid, c.Role)
		}
		return c, nil
	}
	return nil, fmt.Errorf("%w: %v", ErrInvalid, lastErr)
}
