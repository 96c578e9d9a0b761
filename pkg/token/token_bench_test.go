package token_test

import (
	"testing"
	"time"

	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
)

// BenchmarkVerify is the broker's cost of admitting one client: the ES256 JWT parse and
// signature check of its password (once per CONNECT), with one trusted key and with two (during
// a signing-key rotation, when a token of the new key is tried against the old one first in the
// worst case).
func BenchmarkVerify(b *testing.B) {
	now := clocktest.New(time.Unix(1_700_000_000, 0))
	cur, err := sign.Generate()
	if err != nil {
		b.Fatal(err)
	}
	prev, err := sign.Generate()
	if err != nil {
		b.Fatal(err)
	}
	tok, _, err := token.NewIssuer(cur, now).Issue("WVWZZZ1JZXW000001", protocol.RoleVehicle, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		v    *token.Verifier
	}{
		{"one-key", token.NewVerifier(now, cur.Public())},
		{"rotation", token.NewVerifier(now, prev.Public(), cur.Public())},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(tok)))
			for b.Loop() {
				if _, err := c.v.Verify(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkIssue is the gateway's cost of one vehicle credential (POST /v1/admin/vehicles).
func BenchmarkIssue(b *testing.B) {
	s, err := sign.Generate()
	if err != nil {
		b.Fatal(err)
	}
	iss := token.NewIssuer(s, nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := iss.Issue("WVWZZZ1JZXW000001", protocol.RoleVehicle, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}
