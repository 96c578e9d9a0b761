package token

import (
	"testing"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// A token's id names the key that signed it; an id of the old form names none.
func TestTokenIDNamesItsKey(t *testing.T) {
	s, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	_, jti, _, err := NewIssuer(s, nil).IssueID("1HGCM82633A004352", protocol.RoleVehicle, 3600e9)
	if err != nil {
		t.Fatal(err)
	}
	if got := KeyIDOf(jti); got != s.KID() {
		t.Fatalf("KeyIDOf(%q) = %q, want %q", jti, got, s.KID())
	}
	if got := KeyIDOf("0b5e2f0c-54d4-4bd4-9a53-2c1c8f6a1f00"); got != "" {
		t.Fatalf("an id of the old form names key %q", got)
	}
}
