package httpapi

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"telematics/gateway/audit"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// A user is added with a password of 12 bytes or more and a valid name, once; audited.
func TestAddUser(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	if us, err := f.admin.Users(ctx); err != nil || us == nil || len(us) != 0 {
		t.Fatalf("no users: %#v %v (want an empty list, not null)", us, err)
	}
	r := f.do("POST", "/v1/admin/users", "Bearer "+adminToken, strings.NewReader(`{"username":"alice","password":"`+password+`"}`))
	if r.status != 201 || strings.TrimSpace(string(r.body)) != `{"username":"alice"}` {
		t.Fatalf("add alice: %d %s", r.status, r.body)
	}
	for _, tc := range []struct {
		name, user, password string
		status               int
		reason               protocol.Reason
		message              string
	}{
		{"short password", "bob", "elevenbytes", 400, protocol.ReasonBadRequest, "passwords are 12 to 1024 bytes"},
		{"not a user name", "Bob", password, 400, protocol.ReasonBadRequest, "user names are 1-64 of a-z 0-9 _ ."},
		{"reserved name", "gateway", password, 400, protocol.ReasonBadRequest, "not gateway, admin or broker"},
		{"already there", "alice", password, 409, protocol.ReasonDuplicate, "alice"},
	} {
		err := f.admin.AddUser(ctx, tc.user, tc.password)
		if ae := wantError(t, err, tc.status, tc.reason); !strings.Contains(ae.Message, tc.message) {
			t.Errorf("%s: message %q, want %q", tc.name, ae.Message, tc.message)
		}
	}
	us, _ := f.admin.Users(ctx)
	if len(us) != 1 || us[0].Name != "alice" || us[0].CreatedMs != f.clock.Now().UnixMilli() {
		t.Fatalf("users: %+v", us)
	}
	if evs := f.audit(audit.Filter{User: "alice"}); len(evs) != 1 || evs[0].Kind != audit.KindAdmin || evs[0].Outcome != "user_added" {
		t.Fatalf("audit: %+v", evs)
	}
}

// The user list shows each user's state, 2FA enrollment, running lockouts and cars, sorted by
// name; unlock clears both lockouts and keeps the enrollment.
func TestListUsersAndUnlock(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	f.addVehicles(vinA, vinB)
	for _, u := range []string{"carol", "alice", "bob"} {
		f.addUser(u)
	}
	f.admin.Assign(ctx, vinA, "alice", protocol.RoleOwner)
	f.admin.Assign(ctx, vinB, "alice", protocol.RoleDriver)
	f.admin.UserAction(ctx, "carol", "disable")
	// bob enrolls TOTP, then gets his code wrong until the second factor locks; and his
	// password until the password lockout does.
	bob := f.login("bob")
	e, err := bob.EnrollTOTP(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	code, _ := totp.GenerateCode(e.Secret, f.clock.Now())
	if _, err := bob.ConfirmTOTP(ctx, code); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		bob.DisableTOTP(ctx, "000000")
	}
	for i := 0; i < 5; i++ {
		f.app().Login(ctx, "bob", "wrong password!", "")
	}
	lockedUntil := f.clock.Now().Add(15 * time.Minute).UnixMilli()
	us, err := f.admin.Users(ctx)
	if err != nil {
		t.Fatal(err)
	}
	created := f.clock.Now().UnixMilli()
	want := []api.UserView{
		{Name: "alice", CreatedMs: created, Vehicles: map[string]protocol.Role{vinA: protocol.RoleOwner, vinB: protocol.RoleDriver}},
		{Name: "bob", CreatedMs: created, TOTPEnrolled: true, PasswordLockedUntilMs: lockedUntil, TOTPLockedUntilMs: lockedUntil},
		{Name: "carol", CreatedMs: created, Disabled: true},
	}
	if !reflect.DeepEqual(us, want) {
		t.Fatalf("users:\n got %+v\nwant %+v", us, want)
	}

	ch, err := f.admin.UserAction(ctx, "bob", "unlock")
	if want := (api.UserChange{User: "bob", LockoutCleared: true}); err != nil || !reflect.DeepEqual(ch, want) {
		t.Fatalf("unlock: %+v %v", ch, err)
	}
	us, _ = f.admin.Users(ctx)
	if b := us[1]; !b.TOTPEnrolled || b.PasswordLockedUntilMs != 0 || b.TOTPLockedUntilMs != 0 {
		t.Fatalf("bob after unlock: %+v", b)
	}
	if evs := f.audit(audit.Filter{User: "bob", Kind: audit.KindAdmin, Limit: 1}); evs[0].Outcome != "lockout_cleared" ||
		evs[0].Detail != "password_lockout=true totp_lockout=cleared enrollment=kept" || evs[0].ClientID != "admin@127.0.0.1" {
		t.Fatalf("audit: %+v", evs[0])
	}
	f.login("bob")
}

// Disabling a user ends their tokens (here and, through the hook, their MQTT sessions) and
// refuses their logins; enabling lets them log in again, with a new token only.
func TestDisableEnable(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	f.addUser("alice")
	old := f.login("alice")
	ch, err := f.admin.UserAction(ctx, "alice", "disable")
	if err != nil || ch.User != "alice" || ch.Disabled == nil || !*ch.Disabled {
		t.Fatalf("disable: %+v %v", ch, err)
	}
	if ended := f.tokensEnded(); !slices.Equal(ended, []string{"alice"}) {
		t.Fatalf("tokens ended of %v", ended)
	}
	_, err = old.Session(ctx)
	if ae := wantError(t, err, 401, protocol.ReasonUnauthenticated); !strings.Contains(ae.Message, "disabled") {
		t.Fatalf("message %q", ae.Message)
	}
	_, err = f.app().Login(ctx, "alice", password, "")
	wantError(t, err, 403, protocol.ReasonForbidden)

	ch, err = f.admin.UserAction(ctx, "alice", "enable")
	if err != nil || ch.Disabled == nil || *ch.Disabled {
		t.Fatalf("enable: %+v %v", ch, err)
	}
	r := f.do("POST", "/v1/admin/users/alice/enable", "Bearer "+adminToken, nil)
	if strings.TrimSpace(string(r.body)) != `{"disabled":false,"user":"alice"}` {
		t.Fatalf("enable sends disabled false: %s", r.body)
	}
	_, err = old.Session(ctx)
	wantError(t, err, 401, protocol.ReasonUnauthenticated)
	if _, err := f.login("alice").Session(ctx); err != nil {
		t.Fatal(err)
	}
	var outcomes []string
	for _, e := range f.audit(audit.Filter{User: "alice", Kind: audit.KindAdmin}) {
		outcomes = append(outcomes, e.Outcome)
	}
	if want := []string{"user_enabled", "user_enabled", "user_disabled", "user_added"}; !slices.Equal(outcomes, want) {
		t.Fatalf("audit: %q, want %q", outcomes, want)
	}
}

// The admin's password reset ends the user's tokens and clears the password lockout; the
// user's own change needs the old password and answers a new token.
func TestPasswordResetAndChange(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	f.addUser("alice")
	old := f.login("alice")
	for i := 0; i < 5; i++ {
		f.app().Login(ctx, "alice", "wrong password!", "")
	}
	_, err := f.admin.SetPassword(ctx, "alice", "short")
	wantError(t, err, 400, protocol.ReasonBadRequest)
	const second = "a second long password"
	ch, err := f.admin.SetPassword(ctx, "alice", second)
	if want := (api.UserChange{User: "alice", PasswordReset: true}); err != nil || !reflect.DeepEqual(ch, want) {
		t.Fatalf("reset: %+v %v", ch, err)
	}
	_, err = old.Session(ctx)
	wantError(t, err, 401, protocol.ReasonUnauthenticated)
	_, err = f.app().Login(ctx, "alice", password, "")
	wantError(t, err, 401, protocol.ReasonUnauthenticated)
	out, err := f.app().Login(ctx, "alice", second, "") // the lockout was cleared
	if err != nil {
		t.Fatal(err)
	}
	c := f.app().WithToken(out.Token)

	_, err = c.ChangePassword(ctx, "not my password", "a third long password")
	wantError(t, err, 401, protocol.ReasonUnauthenticated)
	if evs := f.audit(audit.Filter{User: "alice", Kind: audit.KindLogin, Limit: 1}); evs[0].Outcome != "password_change_refused" {
		t.Fatalf("audit: %+v", evs[0])
	}
	pc, err := c.ChangePassword(ctx, second, "a third long password")
	if err != nil || pc.User != "alice" || pc.Token == "" || pc.ExpiresAtMs != f.clock.Now().Add(appTTL).UnixMilli() {
		t.Fatalf("change: %+v %v", pc, err)
	}
	_, err = c.Session(ctx)
	wantError(t, err, 401, protocol.ReasonUnauthenticated)
	if _, err := c.WithToken(pc.Token).Session(ctx); err != nil {
		t.Fatalf("the new token: %v", err)
	}
}

// A user with a role on a car is deleted only with from_cars (which removes them from each
// car first); a deleted user's tokens and logins are refused.
func TestDeleteUser(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	f.addVehicles(vinA)
	f.addUser("alice")
	f.addUser("bob")
	f.admin.Assign(ctx, vinA, "alice", protocol.RoleOwner)
	tok := f.login("alice")
	_, err := f.admin.DeleteUser(ctx, "alice", false)
	if ae := wantError(t, err, 409, protocol.ReasonForbidden); !strings.Contains(ae.Message, vinA) || !strings.Contains(ae.Message, "--from-cars") {
		t.Fatalf("message %q", ae.Message)
	}
	ch, err := f.admin.DeleteUser(ctx, "alice", true)
	if want := (api.UserChange{User: "alice", Deleted: true}); err != nil || !reflect.DeepEqual(ch, want) {
		t.Fatalf("delete --from-cars: %+v %v", ch, err)
	}
	if v, _ := f.admin.Vehicle(ctx, vinA); len(v.Users) != 0 {
		t.Fatalf("alice is still on %s: %v", vinA, v.Users)
	}
	_, err = tok.Session(ctx)
	wantError(t, err, 401, protocol.ReasonUnauthenticated)
	_, err = f.app().Login(ctx, "alice", password, "")
	wantError(t, err, 401, protocol.ReasonUnauthenticated)
	_, err = f.admin.DeleteUser(ctx, "alice", false)
	wantError(t, err, 404, protocol.ReasonBadRequest)
	if _, err := f.admin.DeleteUser(ctx, "bob", false); err != nil {
		t.Fatalf("delete bob, on no car: %v", err)
	}
	if us, _ := f.admin.Users(ctx); len(us) != 0 {
		t.Fatalf("users left: %+v", us)
	}
	if evs := f.audit(audit.Filter{User: "bob", Limit: 1}); evs[0].Outcome != "user_deleted" {
		t.Fatalf("audit: %+v", evs[0])
	}
}
