package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admincli "telematics/gateway/admin"
	"telematics/gateway/server"
	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// Issue 8, case 15 (users): nobody could be offboarded. The administrator lists users, disables
// and enables them, resets a password and deletes a user; a user changes their own password.
// Every one of these that ends a user's access ends every app token and session of theirs,
// and each is audited.
func TestUserOffboarding(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGateway(t, dir, nil)
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	addUser(t, g, "bob", "", "")
	runFleet(t, g.BrokerURL(), creds)
	waitOnline(t, g, vin)
	ctx := context.Background()
	cl := newCLI(t, g, dir)
	admin := func(args ...string) string {
		t.Helper()
		out, errs, code := cl.admin(args...)
		if code != 0 {
			t.Fatalf("gateway admin %s: %d %s", strings.Join(args, " "), code, errs)
		}
		return out
	}
	// tokenWorks reports whether an app token is still accepted by the HTTP API.
	tokenWorks := func(tok string) bool {
		t.Helper()
		err := api.NewClient(g.HTTPURL(), tok).Do(ctx, http.MethodGet, "/v1/2fa", nil, nil)
		if err != nil {
			apiErr(t, err, 401, protocol.ReasonUnauthenticated)
		}
		return err == nil
	}

	// The list shows each user's state and cars.
	out := admin("user", "list")
	if !strings.Contains(out, "alice") || !strings.Contains(out, vin+":owner") || !strings.Contains(out, "bob") || !strings.Contains(out, "active") {
		t.Fatalf("user list:\n%s", out)
	}

	// Disabling alice ends her tokens and her MQTT session; she cannot log in.
	app, sess, key := loginKey(t, g, "alice", "", vin)
	waitSynced(t, g, vin)
	expect(t, send(t, app, vin, protocol.ActionLock), protocol.ReplyExecuted, "")
	admin("user", "disable", "alice")
	if tokenWorks(sess.Token) {
		t.Fatal("a disabled user's token still works")
	}
	// Her open session is closed (and the gateway would refuse its commands anyway).
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	r, err := app.Send(sctx, phone.Request{VIN: vin, Action: protocol.ActionLock, Lifetime: 2 * time.Second}, nil)
	cancel()
	if err == nil && r.Status == protocol.ReplyExecuted {
		t.Fatal("a disabled user's open session still commands the car")
	}
	if _, err := phone.ConnectWith(ctx, sess, phone.ConnectOptions{Key: key}); err == nil {
		t.Fatal("a disabled user's token reconnected to the broker")
	}
	_, err = phone.Login(ctx, g.HTTPURL(), "alice", password, "")
	apiErr(t, err, 403, protocol.ReasonForbidden)
	if out := admin("user", "list"); !strings.Contains(out, "DISABLED") {
		t.Fatalf("list does not show alice disabled:\n%s", out)
	}
	// Enabled again, she logs in; her old token stays ended.
	admin("user", "enable", "alice")
	s2, err := phone.Login(ctx, g.HTTPURL(), "alice", password, "")
	if err != nil {
		t.Fatal(err)
	}
	if tokenWorks(sess.Token) || !tokenWorks(s2.Token) {
		t.Fatal("after enable: the old token must stay ended and the new one work")
	}

	// Alice changes her password: the old password is needed, her other tokens end, she gets a
	// new one.
	var changed struct {
		Token string `json:"token"`
	}
	err = api.NewClient(g.HTTPURL(), s2.Token).Do(ctx, http.MethodPost, "/v1/password", api.PasswordRequest{OldPassword: "not her password", Password: "a brand new password"}, nil)
	apiErr(t, err, 401, protocol.ReasonUnauthenticated)
	if err := api.NewClient(g.HTTPURL(), s2.Token).Do(ctx, http.MethodPost, "/v1/password", api.PasswordRequest{OldPassword: password, Password: "a brand new password"}, &changed); err != nil {
		t.Fatal(err)
	}
	if tokenWorks(s2.Token) || !tokenWorks(changed.Token) {
		t.Fatal("after a password change: the old token must end and the returned one work")
	}
	if _, err := phone.Login(ctx, g.HTTPURL(), "alice", password, ""); err == nil {
		t.Fatal("the old password still logs in")
	}
	s3, err := phone.Login(ctx, g.HTTPURL(), "alice", "a brand new password", "")
	if err != nil {
		t.Fatal(err)
	}
	app3, err := phone.ConnectWith(ctx, s3, phone.ConnectOptions{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer app3.Close()
	expect(t, send(t, app3, vin, protocol.ActionLock), protocol.ReplyExecuted, "")

	// The same from the command line: `vehicle-sim app password` keeps the new token.
	if _, errs, code := cl.app("a brand new password\n", "login", "--user", "alice"); code != 0 {
		t.Fatal(errs)
	}
	if out, errs, code := cl.app("a brand new password\nthe third password\n", "password"); code != 0 || !strings.Contains(out, "changed") {
		t.Fatalf("app password: %d %q %q", code, out, errs)
	}
	if out, errs, code := cl.app("", "key", "list"); code != 0 {
		t.Fatalf("the session after app password: %q %q", out, errs)
	}
	if _, err := phone.Login(ctx, g.HTTPURL(), "alice", "the third password", ""); err != nil {
		t.Fatal(err)
	}

	// The administrator resets bob's password: bob's tokens end.
	bob, err := phone.Login(ctx, g.HTTPURL(), "bob", password, "")
	if err != nil {
		t.Fatal(err)
	}
	if out2, errs, code := cl.adminStdin("another new password\n", "user", "password", "bob"); code != 0 {
		t.Fatalf("user password: %s %s", out2, errs)
	}
	if tokenWorks(bob.Token) {
		t.Fatal("bob's token works after the admin reset his password")
	}
	if _, err := phone.Login(ctx, g.HTTPURL(), "bob", "another new password", ""); err != nil {
		t.Fatal(err)
	}

	// Deleting a user who still has a car is refused with what to do; bob has none.
	if _, errs, code := cl.admin("user", "delete", "alice"); code == 0 || !strings.Contains(errs, vin) || !strings.Contains(errs, "remove the user from these cars first") {
		t.Fatalf("delete of a user with a car: %d %q", code, errs)
	}
	bob2, _ := phone.Login(ctx, g.HTTPURL(), "bob", "another new password", "")
	admin("user", "delete", "bob")
	if tokenWorks(bob2.Token) {
		t.Fatal("a deleted user's token still works")
	}
	_, err = phone.Login(ctx, g.HTTPURL(), "bob", "another new password", "")
	apiErr(t, err, 401, protocol.ReasonUnauthenticated)
	if out := admin("user", "list"); strings.Contains(out, "bob") {
		t.Fatalf("bob still listed:\n%s", out)
	}
	// --from-cars takes alice off her car first (her keys leave the whitelist), then deletes her.
	admin("user", "delete", "alice", "--from-cars")
	var shown struct {
		Users map[string]protocol.Role `json:"users"`
		Keys  struct {
			Keys []protocol.WhitelistKey `json:"keys"`
		} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(admin("vehicle", "show", vin, "--json")), &shown); err != nil {
		t.Fatal(err)
	}
	if _, ok := shown.Users["alice"]; ok {
		t.Fatalf("alice still on the car after delete --from-cars: %v", shown.Users)
	}
	for _, k := range shown.Keys.Keys {
		if k.RevokedAtMs == 0 {
			t.Fatalf("alice's key %s is not revoked", k.ID)
		}
	}
	// A new bob is not the old one: the old bob's token does not work for him.
	addUser(t, g, "bob", "", "")
	if tokenWorks(bob2.Token) {
		t.Fatal("a deleted user's token works for a new user of the same name")
	}

	out = admin("audit", "--kind", "admin", "--limit", "100", "--json")
	for _, want := range []string{"user_disabled", "user_enabled", "password_reset", "user_deleted"} {
		if !strings.Contains(out, `"outcome":"`+want+`"`) {
			t.Errorf("audit lacks %s", want)
		}
	}
	if out := admin("audit", "--user", "alice", "--kind", "login", "--json"); !strings.Contains(out, `"outcome":"password_changed"`) {
		t.Errorf("the password change is not audited:\n%s", out)
	}
	if out := admin("audit", "--limit", "500", "--json"); strings.Contains(out, "brand new password") || strings.Contains(out, "another new password") {
		t.Fatal("a password reached the audit log")
	}
}

func (c cli) adminStdin(stdin string, args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	base := []string{"--server", c.g.HTTPURL(), "--token-file", filepath.Join(c.dir, server.AdminTokenFile)}
	code := admincli.Run(context.Background(), append(base, args...), admincli.Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb})
	return out.String(), errb.String(), code
}
