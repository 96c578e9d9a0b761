package admin_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// user add, list, disable, enable, unlock, password and delete: what people read, --json in
// the shape of package api's types, and the effect on logins.
func TestUserCommands(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	ctx := context.Background()
	login := func(user, pw string) error {
		_, err := api.NewClient(g.cloud.HTTPURL(), "").Login(ctx, user, pw, "")
		return err
	}
	g.addUser("bob")
	if out := g.ok(password+"\n", "user", "add", "alice", "--json"); strings.Join(strings.Fields(out), "") != `{"added":true,"user":"alice"}` {
		t.Fatalf("user add --json: %q", out)
	}
	r := g.run(password+"\n", "user", "add", "alice")
	if r.code != 1 || !strings.Contains(r.stderr, "gateway admin user add: duplicate: ") {
		t.Fatalf("user add again: %+v", r)
	}
	g.ok("", "vehicle", "add", vinA)
	g.ok("", "vehicle", "assign", vinA, "alice", "--role", "owner")

	// disable: logins refused; list shows it
	if out := g.ok("", "user", "disable", "bob"); out != "bob is disabled: logins refused, every app token and session ended\n" {
		t.Fatalf("user disable: %q", out)
	}
	if err := login("bob", password); err == nil || err.(*api.Error).Reason != protocol.ReasonForbidden {
		t.Fatalf("login of a disabled user: %v", err)
	}
	out := g.ok("", "user", "list")
	ls := lines(out)
	if len(ls) != 3 || !slices.Equal(fields(ls[0]), []string{"USER", "STATE", "2FA", "LOCKED UNTIL", "VEHICLES"}) {
		t.Fatalf("user list:\n%s", out)
	}
	if want := []string{"alice", "active", "no", "-", vinA + ":owner"}; !slices.Equal(fields(ls[1]), want) {
		t.Errorf("alice's row: %q, want %q", fields(ls[1]), want)
	}
	if want := []string{"bob", "DISABLED", "no", "-", "-"}; !slices.Equal(fields(ls[2]), want) {
		t.Errorf("bob's row: %q, want %q", fields(ls[2]), want)
	}
	var ch api.UserChange
	decode(t, g.ok("", "user", "enable", "bob", "--json"), &ch)
	if ch.User != "bob" || ch.Disabled == nil || *ch.Disabled {
		t.Fatalf("user enable --json: %+v", ch)
	}
	if err := login("bob", password); err != nil {
		t.Fatalf("login after enable: %v", err)
	}

	// unlock: five wrong passwords lock bob out; list shows until when; unlock clears it
	for i := 0; i < 5; i++ {
		login("bob", "wrong password!")
	}
	var us []api.UserView
	decode(t, g.ok("", "user", "list", "--json"), &us)
	if len(us) != 2 || us[1].Name != "bob" || us[1].PasswordLockedUntilMs == 0 || us[0].Vehicles[vinA] != protocol.RoleOwner {
		t.Fatalf("user list --json: %+v", us)
	}
	if row := fields(lines(g.ok("", "user", "list"))[2]); !strings.HasPrefix(row[3], "password ") {
		t.Fatalf("bob's row while locked out: %q", row)
	}
	if out := g.ok("", "user", "unlock", "bob"); out != "lockouts of bob cleared (password and 2FA); the TOTP enrollment is kept\n" {
		t.Fatalf("user unlock: %q", out)
	}
	if err := login("bob", password); err != nil {
		t.Fatalf("login after unlock: %v", err)
	}
	if out := g.ok("", "user", "reset-2fa", "bob"); out != "bob had no TOTP enrollment; any lockout is cleared\n" {
		t.Fatalf("user reset-2fa: %q", out)
	}

	// password: read from stdin; the old one stops working
	const second = "a second long password"
	if out := g.ok(second+"\n", "user", "password", "bob"); out != "password of bob set; every app token and session of theirs ended\n" {
		t.Fatalf("user password: %q", out)
	}
	if login("bob", password) == nil || login("bob", second) != nil {
		t.Fatal("the new password is not the one that works")
	}

	// delete: refused while alice is on a car, unless --from-cars
	r = g.run("", "user", "delete", "alice")
	if r.code != 1 || !strings.Contains(r.stderr, "gateway admin user delete: forbidden: ") || !strings.Contains(r.stderr, vinA) ||
		!strings.Contains(r.stderr, "--from-cars") {
		t.Fatalf("user delete of a car's owner: %+v", r)
	}
	if out := g.ok("", "user", "delete", "alice", "--from-cars"); out != "user alice deleted, with their TOTP enrollment; their tokens no longer work\n" {
		t.Fatalf("user delete --from-cars: %q", out)
	}
	if out := g.ok("", "user", "delete", "bob", "--json"); strings.Join(strings.Fields(out), "") != `{"deleted":true,"user":"bob"}` {
		t.Fatalf("user delete --json: %q", out)
	}
	if out := g.ok("", "user", "list"); len(lines(out)) != 1 {
		t.Fatalf("users left:\n%s", out)
	}
}
