package httpapi

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// A right password gets an app token of the user's current generation, the client id prefix,
// the broker and the gateway key; the login is audited with the client's address.
func TestLoginAnswersTokenBrokerAndKey(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.addUser("alice")
	out, err := f.app().Login(context.Background(), "alice", password, "")
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := sign.EncodePublic(f.signer.Public())
	want := api.LoginResponse{User: "alice", Token: out.Token, ExpiresAtMs: f.clock.Now().Add(appTTL).UnixMilli(),
		ClientIDPrefix: "alice-", BrokerURL: brokerURL, GatewayKey: pub, GatewayKeys: []string{pub}}
	if !reflect.DeepEqual(out, want) {
		t.Fatalf("login:\n got %+v\nwant %+v", out, want)
	}
	c, err := f.api.Verifier.Verify(out.Token)
	if err != nil || c.Subject != "alice" || c.Role != protocol.RoleApp {
		t.Fatalf("token: %+v %v", c, err)
	}
	u, _ := f.api.Store.GetUser("alice")
	if c.Gen != u.TokenGen {
		t.Fatalf("token generation %d, user's %d", c.Gen, u.TokenGen)
	}
	evs := f.audit(audit.Filter{Kind: audit.KindLogin})
	if len(evs) != 1 || evs[0].User != "alice" || evs[0].Outcome != "ok" || evs[0].ClientID != "127.0.0.1" ||
		evs[0].Detail != "password=right" || evs[0].TsMs != f.clock.Now().UnixMilli() {
		t.Fatalf("audit: %+v", evs)
	}
}

// A wrong password and an unknown name get the same answer, each audited as refused; a name
// no user can have is refused the same way before anything is written.
func TestLoginRefusals(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.addUser("alice")
	ctx := context.Background()
	for _, tc := range []struct {
		name, user string
		audited    bool
	}{
		{"wrong password", "alice", true},
		{"unknown name", "mallory", true},
		{"upper case", "Alice", false},
		{"reserved name", "admin", false},
		{"too long", strings.Repeat("a", 65), false},
		{"empty", "", false},
	} {
		before := len(f.audit(audit.Filter{Kind: audit.KindLogin}))
		_, err := f.app().Login(ctx, tc.user, "not the password", "")
		ae := wantError(t, err, 401, protocol.ReasonUnauthenticated)
		if ae.Message != "wrong user name or password" {
			t.Errorf("%s: message %q", tc.name, ae.Message)
		}
		evs := f.audit(audit.Filter{Kind: audit.KindLogin})
		switch {
		case tc.audited && (len(evs) != before+1 || evs[0].User != tc.user || evs[0].Outcome != "refused" ||
			evs[0].Reason != string(protocol.ReasonUnauthenticated) || evs[0].Detail != "password=wrong"):
			t.Errorf("%s: audit %+v", tc.name, evs)
		case !tc.audited && len(evs) != before:
			t.Errorf("%s: a malformed name was audited: %+v", tc.name, evs[0])
		}
	}
}

// Five wrong passwords lock the name out (without checking the sixth, right or not) until the
// lockout ends; a disabled account is refused after a right password.
func TestLoginLockoutAndDisabled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.addUser("alice")
	f.addUser("bob")
	ctx := context.Background()
	for i := 0; i < 4; i++ {
		_, err := f.app().Login(ctx, "alice", "wrong password!", "")
		wantError(t, err, 401, protocol.ReasonUnauthenticated)
	}
	_, err := f.app().Login(ctx, "alice", "wrong password!", "")
	wantError(t, err, 429, protocol.ReasonLockedOut)
	_, err = f.app().Login(ctx, "alice", password, "")
	if ae := wantError(t, err, 429, protocol.ReasonLockedOut); !strings.Contains(ae.Message, "unlock") {
		t.Fatalf("the lockout does not say what to do: %q", ae.Message)
	}
	if evs := f.audit(audit.Filter{Kind: audit.KindLogin, Limit: 1}); evs[0].Detail != "password=unchecked" {
		t.Fatalf("a locked-out login checked the password: %+v", evs[0])
	}
	f.clock.Advance(15*time.Minute + time.Second)
	f.login("alice")

	if _, err := f.admin.UserAction(ctx, "bob", "disable"); err != nil {
		t.Fatal(err)
	}
	_, err = f.app().Login(ctx, "bob", password, "")
	wantError(t, err, 403, protocol.ReasonForbidden)
	_, err = f.app().Login(ctx, "bob", "wrong password!", "")
	wantError(t, err, 401, protocol.ReasonUnauthenticated) // a disabled account is told only after a right password
}

// Failed logins from one address use up its budget: then every attempt is rate_limited before
// anything is checked or audited, a right password included, until the bucket refills. A
// successful login gives its attempt back.
func TestLoginPerAddressLimit(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(a *API, _ *twofa.Policy) { a.LoginRatePerMinute, a.LoginBurst = 1, 3 })
	f.addUser("alice")
	ctx := context.Background()
	for i := 0; i < 5; i++ { // successes cost nothing
		f.login("alice")
	}
	for _, user := range []string{"bob", "carol", "Not A Name"} {
		_, err := f.app().Login(ctx, user, "wrong password!", "")
		wantError(t, err, 401, protocol.ReasonUnauthenticated)
	}
	before := len(f.audit(audit.Filter{}))
	_, err := f.app().Login(ctx, "alice", password, "")
	if ae := wantError(t, err, 429, protocol.ReasonRateLimited); !strings.Contains(ae.Message, "this address") {
		t.Fatalf("message %q", ae.Message)
	}
	r := f.do("POST", "/v1/login", "", strings.NewReader(`{"username":"alice","password":"`+password+`"}`))
	if e := errorBody(t, r); r.status != 429 || e.Error != protocol.ReasonRateLimited {
		t.Fatalf("raw: %d %+v", r.status, e)
	}
	if after := len(f.audit(audit.Filter{})); after != before {
		t.Fatalf("rate-limited logins were audited: %d records, were %d", after, before)
	}
	f.clock.Advance(time.Minute) // one attempt back
	f.login("alice")
}

// With a policy that requires 2FA at login, a right password of a user who has not enrolled
// is totp_enrollment_required (403), audited with that reason.
func TestLoginAsksTheSecondFactor(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(_ *API, p *twofa.Policy) { p.Mode = twofa.ModeRequired; p.LoginRequiresTOTP = true })
	f.addUser("alice")
	_, err := f.app().Login(context.Background(), "alice", password, "")
	wantError(t, err, 403, protocol.ReasonTOTPEnrollmentRequired)
	if evs := f.audit(audit.Filter{Kind: audit.KindLogin, Limit: 1}); evs[0].Outcome != "refused" ||
		evs[0].Reason != string(protocol.ReasonTOTPEnrollmentRequired) || evs[0].Detail != "password=right" {
		t.Fatalf("audit: %+v", evs[0])
	}
}
