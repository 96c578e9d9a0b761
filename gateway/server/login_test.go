package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"

	"telematics/gateway/audit"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// rawLogin posts a login and returns the HTTP status and the error body (reason, message).
func rawLogin(t *testing.T, g *server.Gateway, user, pw string) (int, string, string) {
	t.Helper()
	b, _ := json.Marshal(api.LoginRequest{Username: user, Password: pw})
	resp, err := http.Post(g.HTTPURL()+"/v1/login", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error, e.Message
}

func auditCount(t *testing.T, g *server.Gateway) int {
	t.Helper()
	n, err := g.Audit().Count()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Issue 8, case 3: 300 logins with a 60,000-character user name grew gateway.db by 33 MB: the
// raw name went into the durable audit log. A name no user can have is refused before any
// write.
func TestLoginRefusesLongNameBeforeAnyWrite(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), nil)
	before := auditCount(t, g)
	long := strings.Repeat("a", 60_000)
	for _, name := range []string{long, "Bad-Name", "gateway", ""} {
		status, reason, _ := rawLogin(t, g, name, password)
		if status != http.StatusUnauthorized || reason != string(protocol.ReasonUnauthenticated) {
			t.Fatalf("login as %.20q: HTTP %d %s, want 401 unauthenticated", name, status, reason)
		}
	}
	if after := auditCount(t, g); after != before {
		evs, _ := g.Audit().Query(audit.Filter{Kind: audit.KindLogin})
		t.Fatalf("%d audit records written for malformed names (%d bytes of user in the newest)", after-before, len(evs[0].User))
	}
}

// Issue 8, case 3: failed logins are limited per client address. A successful login gives its
// token back, so an address's real users are never slowed down by their own logins.
func TestLoginRateLimitedPerAddress(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), func(c *server.Config) {
		c.Login.PerIPRatePerMinute, c.Login.PerIPBurst = 0.001, 3
	})
	addUser(t, g, "dave", "", "")
	ctx := context.Background()
	for range 10 {
		if _, err := phone.Login(ctx, g.HTTPURL(), "dave", password, ""); err != nil {
			t.Fatalf("successful logins use up the limit: %v", err)
		}
	}
	for _, name := range []string{"nobody1", "nobody2", strings.Repeat("x", 60_000)} {
		if status, reason, _ := rawLogin(t, g, name, password); status != 401 {
			t.Fatalf("failed login %q within the burst: %d %s", name[:7], status, reason)
		}
	}
	before := auditCount(t, g)
	for _, name := range []string{"nobody3", strings.Repeat("y", 60_000), "dave"} {
		status, reason, msg := rawLogin(t, g, name, password)
		if status != http.StatusTooManyRequests || reason != string(protocol.ReasonRateLimited) {
			t.Fatalf("login %.7q after the burst of failures: HTTP %d %s %q, want 429 rate_limited", name, status, reason, msg)
		}
	}
	if after := auditCount(t, g); after != before {
		t.Fatalf("rate-limited logins wrote %d audit records", after-before)
	}
}

// loginEvents returns the login records of user, newest first.
func loginEvents(t *testing.T, g *server.Gateway, user string) []audit.Event {
	t.Helper()
	evs, err := g.Audit().Query(audit.Filter{Kind: audit.KindLogin, User: user, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// Issue 8, case 4: 30 parallel wrong passwords were all evaluated (policy: 5), and the right
// password then got a token. An attempt is counted before its password is checked: at most
// max_failures wrong passwords are evaluated, and the right one is refused while locked.
func TestLockoutCannotBeRaced(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), func(c *server.Config) { c.Login.PerIPRatePerMinute = 0 })
	addUser(t, g, "bob", "", "")
	var wg sync.WaitGroup
	var mu sync.Mutex
	answers := map[string]int{}
	for i := range 30 {
		wg.Go(func() {
			status, reason, _ := rawLogin(t, g, "bob", "wrong password "+string(rune('a'+i)))
			mu.Lock()
			answers[reason]++
			mu.Unlock()
			if status == http.StatusOK {
				t.Errorf("a wrong password logged in")
			}
		})
	}
	wg.Wait()
	if n := answers[string(protocol.ReasonUnauthenticated)]; n > 4 {
		t.Errorf("%d wrong passwords answered unauthenticated, at most 4 may be (the 5th locks): %v", n, answers)
	}
	evaluated := 0
	for _, e := range loginEvents(t, g, "bob") {
		if strings.Contains(e.Detail, "password=wrong") {
			evaluated++
		}
	}
	if evaluated > 5 || evaluated == 0 {
		t.Errorf("%d wrong passwords evaluated, want 1 to 5 (max_failures): %v", evaluated, answers)
	}
	status, reason, _ := rawLogin(t, g, "bob", password)
	if status != http.StatusTooManyRequests || reason != string(protocol.ReasonLockedOut) {
		t.Fatalf("right password after the race: HTTP %d %s, want 429 locked_out", status, reason)
	}
}

// Issue 8, case 5: five wrong passwords from a stranger locked the owner's TOTP-guarded
// actions too. The password lockout blocks password login only: the owner's session with a
// valid code still unlocks the car.
func TestPasswordLockoutSparesSecondFactor(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), func(c *server.Config) { c.TwoFA.Mode = twofa.ModeEnrolled })
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	runFleet(t, g.BrokerURL(), creds)
	waitOnline(t, g, vin)
	app, code := enrolledOwner(t, g, "alice", vin)

	for i := range 5 {
		if status, _, _ := rawLogin(t, g, "alice", "a stranger's guess"); status == http.StatusOK {
			t.Fatalf("guess %d logged in", i+1)
		}
	}
	if status, reason, _ := rawLogin(t, g, "alice", password); reason != string(protocol.ReasonLockedOut) {
		t.Fatalf("password login after five wrong passwords: HTTP %d %s, want locked_out", status, reason)
	}
	r, err := app.Send(context.Background(), phone.Request{VIN: vin, Action: protocol.ActionUnlock, TOTP: code()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, r, protocol.ReplyExecuted, "")
}

// loginEnrolled logs user in and enrolls and confirms TOTP; it returns the session and a
// source of the current code.
func loginEnrolled(t *testing.T, g *server.Gateway, user string) (*phone.Session, func() string) {
	t.Helper()
	ctx := context.Background()
	sess, err := phone.Login(ctx, g.HTTPURL(), user, password, "")
	if err != nil {
		t.Fatal(err)
	}
	auth, _, err := phone.EnrollAuthenticator(ctx, sess.Client())
	if err != nil {
		t.Fatal(err)
	}
	return sess, func() string {
		c, err := auth.Code()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
}

// enrolledOwner logs user in, enrolls and confirms TOTP, pairs a phone key with vin using a
// code, and connects; it returns the app and the user's authenticator.
func enrolledOwner(t *testing.T, g *server.Gateway, user, vin string) (*phone.App, func() string) {
	t.Helper()
	ctx := context.Background()
	sess, code := loginEnrolled(t, g, user)
	key, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := phone.PairKey(ctx, sess, key, vin, "phone", code()); err != nil {
		t.Fatal(err)
	}
	waitSynced(t, g, vin)
	app, err := phone.ConnectWith(ctx, sess, phone.ConnectOptions{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	return app, code
}

// Issue 8, case 5: the administrator clears a lockout (`gateway admin user unlock`) without
// touching the TOTP enrollment, and it is audited.
func TestAdminClearsLockoutKeepsEnrollment(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGateway(t, dir, func(c *server.Config) { c.TwoFA.Mode = twofa.ModeEnrolled })
	addUser(t, g, "carol", "", "")
	ctx := context.Background()
	sess, _ := loginEnrolled(t, g, "carol")
	for range 5 {
		rawLogin(t, g, "carol", "wrong password")
	}
	if _, reason, _ := rawLogin(t, g, "carol", password); reason != string(protocol.ReasonLockedOut) {
		t.Fatalf("not locked out: %s", reason)
	}
	cl := newCLI(t, g, dir)
	if out, errs, code := cl.admin("user", "unlock", "carol"); code != 0 || !strings.Contains(out, "carol") {
		t.Fatalf("user unlock: %d %q %q", code, out, errs)
	}
	if _, err := phone.Login(ctx, g.HTTPURL(), "carol", password, ""); err != nil {
		t.Fatalf("login after unlock: %v", err)
	}
	var st struct {
		Enrolled bool `json:"enrolled"`
	}
	if err := api.NewClient(g.HTTPURL(), sess.Token).Do(ctx, http.MethodGet, "/v1/2fa", nil, &st); err != nil || !st.Enrolled {
		t.Fatalf("enrollment after unlock: %+v %v", st, err)
	}
	out, _, _ := cl.admin("audit", "--user", "carol", "--kind", "admin", "--json")
	if !strings.Contains(out, `"outcome":"lockout_cleared"`) || !strings.Contains(out, "enrollment=kept") {
		t.Fatalf("unlock not audited: %s", out)
	}
	if _, _, code := cl.admin("user", "unlock", "nobody"); code == 0 {
		t.Fatal("unlock of an unknown user succeeded")
	}
}

// Issue 8, case 14: after five bad logins the answer named a known user ("locked_out … user
// "frank" until …") while an unknown name kept getting "wrong user name or password". Known
// and unknown names get the same answers, attempt by attempt, and the same lockout.
func TestLockoutDoesNotRevealAccounts(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), func(c *server.Config) { c.TwoFA.Mode = twofa.ModeEnrolled })
	addUser(t, g, "frank", "", "")
	times := regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`)
	answers := func(name string) []string {
		var out []string
		for range 7 {
			status, reason, msg := rawLogin(t, g, name, "wrong password")
			msg = times.ReplaceAllString(strings.ReplaceAll(msg, name, "NAME"), "TIME")
			out = append(out, strings.Join([]string{http.StatusText(status), reason, msg}, " | "))
		}
		return out
	}
	known, unknown := answers("frank"), answers("nobody")
	for i := range known {
		if known[i] != unknown[i] {
			t.Errorf("attempt %d: known user %q, unknown name %q", i+1, known[i], unknown[i])
		}
	}
	if !strings.Contains(known[6], string(protocol.ReasonLockedOut)) {
		t.Errorf("no lockout after 7 wrong passwords: %q", known[6])
	}
	// The right password during the lockout gets what a made-up one gets.
	_, r1, m1 := rawLogin(t, g, "frank", password)
	_, r2, m2 := rawLogin(t, g, "nobody", password)
	if r1 != r2 || times.ReplaceAllString(strings.ReplaceAll(m1, "frank", "NAME"), "T") != times.ReplaceAllString(strings.ReplaceAll(m2, "nobody", "NAME"), "T") {
		t.Errorf("right password while locked: %s %q vs unknown name %s %q", r1, m1, r2, m2)
	}
	var ae *api.Error
	if _, err := phone.Login(context.Background(), g.HTTPURL(), "frank", password, ""); !errors.As(err, &ae) || ae.Reason != protocol.ReasonLockedOut {
		t.Fatalf("frank during lockout: %v", err)
	}

	// A user whose second factor is locked out (wrong codes from their own session): a
	// stranger's wrong password must still get what an unknown name gets, not a locked_out
	// that tells the account exists (and is under attack).
	addUser(t, g, "grace", "", "")
	ctx := context.Background()
	sess, _ := loginEnrolled(t, g, "grace")
	for range 5 {
		api.NewClient(g.HTTPURL(), sess.Token).Do(ctx, http.MethodPost, "/v1/2fa/disable", map[string]string{"code": "not-a-code"}, nil)
	}
	_, r1, m1 = rawLogin(t, g, "grace", "a stranger's guess")
	_, r2, m2 = rawLogin(t, g, "nobody2", "a stranger's guess")
	if r1 != r2 || strings.ReplaceAll(m1, "grace", "NAME") != strings.ReplaceAll(m2, "nobody2", "NAME") {
		t.Errorf("wrong password for a user whose 2FA is locked: %s %q; for an unknown name: %s %q", r1, m1, r2, m2)
	}
}
