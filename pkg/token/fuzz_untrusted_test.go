package token

import (
	"strings"
	"testing"
	"time"

	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// FuzzVerify feeds arbitrary strings to Verify, as the broker gets them in a CONNECT's password
// and the gateway in an Authorization header: no panic, and the claims of an accepted token
// are exactly those of a token the gateway issued (nothing forged, nothing altered).
func FuzzVerify(f *testing.F) {
	gw, err := sign.Generate()
	if err != nil {
		f.Fatal(err)
	}
	other, _ := sign.Generate()
	now := time.UnixMilli(1_800_000_000_000)
	clock := clocktest.New(now)
	issued := map[string]Claims{} // by jti
	issue := func(s *sign.Signer, sub string, role protocol.Role, ttl time.Duration) string {
		tok, jti, _, err := NewIssuer(s, clock).IssueID(sub, role, ttl)
		if err != nil {
			f.Fatal(err)
		}
		if s == gw {
			c := Claims{Role: role}
			c.Subject, c.ID = sub, jti
			issued[jti] = c
		}
		return tok
	}
	for _, tok := range []string{
		issue(gw, "1HGCM82633A004352", protocol.RoleVehicle, time.Hour),
		issue(gw, "alice", protocol.RoleApp, time.Hour),
		issue(gw, "gateway", protocol.RoleGateway, time.Hour),
		issue(gw, "alice", protocol.RoleApp, -time.Hour), // expired
		issue(other, "alice", protocol.RoleAdmin, time.Hour),
	} {
		f.Add(tok)
	}
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.")
	f.Add(strings.Repeat("a", 5000))
	v := NewVerifier(clock, gw.Public())
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := v.Verify(raw)
		if err != nil {
			return
		}
		want, ok := issued[c.ID]
		if !ok || c.Subject != want.Subject || c.Role != want.Role {
			t.Fatalf("accepted claims %+v the gateway did not issue", c)
		}
		if !c.ExpiresAt.After(now) {
			t.Fatalf("accepted an expired token: %v", c.ExpiresAt)
		}
	})
}
