package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	admincli "telematics/gateway/admin"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/internal/testutil"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/vehicle-sim/appcmd"
)

// oathtool is the independent TOTP implementation (Debian's oath-toolkit).
func oathtool(t *testing.T, secret string, at time.Time) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "oathtool", "--totp", "-b", "--now", at.UTC().Format("2006-01-02 15:04:05 UTC"), secret).Output()
	if err != nil {
		t.Fatalf("oathtool: %v", err)
	}
	return strings.TrimSpace(string(out))
}

type cli struct {
	t       *testing.T
	g       *server.Gateway
	session string
	dir     string
	key     string
}

func newCLI(t *testing.T, g *server.Gateway, dir string) cli {
	d := t.TempDir()
	return cli{t: t, g: g, session: filepath.Join(d, "s.json"), dir: dir, key: filepath.Join(d, "phone.key")}
}

func (c cli) app(stdin string, args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := appcmd.Run(context.Background(), append([]string{"--gateway", c.g.HTTPURL(), "--session", c.session, "--key", c.key}, args...),
		appcmd.Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	return out.String(), errb.String(), code
}

func (c cli) admin(args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	base := []string{"--server", c.g.HTTPURL(), "--token-file", filepath.Join(c.dir, server.AdminTokenFile)}
	code := admincli.Run(context.Background(), append(base, args...), admincli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb})
	return out.String(), errb.String(), code
}

// TestTOTPEndToEndWithOathtool: enrollment through `vehicle-sim app totp`, codes from Debian's
// oathtool, commands through `vehicle-sim app send --totp`.
func TestTOTPEndToEndWithOathtool(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("oathtool"); err != nil {
		t.Skip("oathtool not installed (Debian package oathtool; .ci/run installs it)")
	}
	dir := t.TempDir()
	g := startGateway(t, dir, func(c *server.Config) { c.TwoFA.Mode = twofa.ModeEnrolled })
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	runFleet(t, g.BrokerURL(), creds)
	waitOnline(t, g, vin)
	c := newCLI(t, g, dir)
	if _, errs, code := c.app(password+"\n", "login", "--user", "alice"); code != 0 {
		t.Fatal(errs)
	}
	if _, errs, code := c.app("", "key", "create"); code != 0 {
		t.Fatal(errs)
	}
	// Key changes need two-factor authentication: first enroll.
	if _, errs, code := c.app("", "key", "pair", vin); code != 1 || !strings.Contains(errs, "totp_enrollment_required") {
		t.Fatalf("pair before enrollment: %d %q", code, errs)
	}

	qr := filepath.Join(t.TempDir(), "qr.png")
	out, errs, code := c.app("", "totp", "enroll", "--json", "--qr", qr)
	if code != 0 {
		t.Fatalf("enroll: %s", errs)
	}
	var e struct {
		URL    string `json:"otpauth_url"`
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal([]byte(out), &e); err != nil || e.Secret == "" || !strings.HasPrefix(e.URL, "otpauth://totp/") {
		t.Fatalf("enroll --json: %q", out)
	}
	if png, err := os.ReadFile(qr); err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("QR PNG: %v", err)
	}
	if out, _, code := c.app("", "totp", "enroll"); code != 0 || !strings.Contains(out, "▀") && !strings.Contains(out, "█") {
		t.Fatalf("terminal QR not drawn: %q", out)
	}
	// The terminal enroll replaced the pending secret: read the new one.
	out, _, _ = c.app("", "totp", "enroll", "--json")
	json.Unmarshal([]byte(out), &e)

	// Three consecutive 30 s steps are all inside the ±1-step window: confirm with the
	// previous step's code, pair with the current one, unlock with the next one. Start at the
	// beginning of a step so the window cannot move during the sequence.
	now := freshStep()
	out, errs, code = c.app("", "totp", "confirm", oathtool(t, e.Secret, now.Add(-30*time.Second)))
	if code != 0 || strings.Count(out, "\n  ") != 10 {
		t.Fatalf("confirm: %d %q %s", code, out, errs)
	}
	recovery := strings.Fields(strings.SplitN(out, "\n", 2)[1])
	if _, errs, code := c.app("", "key", "pair", vin); code != 1 || !strings.Contains(errs, "totp_required") {
		t.Fatalf("pair without code: %d %q", code, errs)
	}
	if _, errs, code := c.app("", "key", "pair", vin, "--totp", oathtool(t, e.Secret, now)); code != 0 {
		t.Fatalf("pair with code: %q", errs)
	}
	waitSynced(t, g, vin)

	// Enrolled now: unlock without a code is refused, with a fresh oathtool code executed.
	if out, _, code := c.app("", "send", vin, "unlock"); code != 1 || !strings.Contains(out, "totp_required") {
		t.Fatalf("unlock without code: %d %q", code, out)
	}
	// lock is not a guarded action.
	if out, errs, code := c.app("", "send", vin, "lock"); code != 0 {
		t.Fatalf("lock: %s %s", out, errs)
	}
	next := oathtool(t, e.Secret, now.Add(30*time.Second))
	if out, errs, code := c.app("", "send", vin, "unlock", "--totp", next); code != 0 {
		t.Fatalf("unlock with oathtool code: %q %s", out, errs)
	}
	// A step-up lasts as long as the app's MQTT connection, and each `app send` makes its own:
	// the next invocation needs a code again (issue 8, case 12).
	if out, _, code := c.app("", "send", vin, "open_trunk"); code != 1 || !strings.Contains(out, "totp_required") {
		t.Fatalf("open_trunk from a new connection: %d %q", code, out)
	}
	// A code presented is always verified: the used code is a replay even under step-up.
	if out, _, code := c.app("", "send", vin, "unlock", "--totp", next); code != 1 || !strings.Contains(out, "totp_replayed") {
		t.Fatalf("replayed code: %d %q", code, out)
	}
	// Another session (a new login, same phone key) is not elevated.
	other := c
	other.session = filepath.Join(t.TempDir(), "s2.json")
	other.app(password+"\n", "login", "--user", "alice")
	if out, _, code := other.app("", "send", vin, "unlock"); code != 1 || !strings.Contains(out, "totp_required") {
		t.Fatalf("second session elevated: %d %q", code, out)
	}
	// Wrong codes: four failures, then a fifth locks the user out; a correct code is refused too.
	wrong := "000000"
	if wrong == next || wrong == oathtool(t, e.Secret, now) || wrong == oathtool(t, e.Secret, now.Add(-30*time.Second)) {
		wrong = "999999"
	}
	for i := 0; i < 5; i++ {
		out, _, _ := other.app("", "send", vin, "unlock", "--cloud-only", "--totp", wrong)
		want := "totp_invalid"
		if i == 4 {
			want = "locked_out"
		}
		if !strings.Contains(out, want) {
			t.Fatalf("failure %d: %q, want %s", i+1, out, want)
		}
	}
	if out, _, _ := other.app("", "send", vin, "unlock", "--cloud-only", "--totp", recovery[0]); !strings.Contains(out, "locked_out") {
		t.Fatalf("recovery code during lockout: %q", out)
	}
	// Password login is locked out too.
	if _, errs, code := other.app(password+"\n", "login", "--user", "alice"); code != 1 || !strings.Contains(errs, "locked_out") {
		t.Fatalf("login during lockout: %d %q", code, errs)
	}
	// The admin resets 2FA (and the lockout); it is audited.
	if _, errs, code := c.admin("user", "reset-2fa", "alice"); code != 0 {
		t.Fatal(errs)
	}
	if out, errs, code := other.app("", "send", vin, "unlock"); code != 0 {
		t.Fatalf("unlock after reset (no longer enrolled): %q %s", out, errs)
	}
	out, _, _ = c.admin("audit", "--user", "alice", "--kind", "2fa", "--limit", "200", "--json")
	for _, ev := range []string{`"outcome":"enroll"`, `"outcome":"confirm"`, `"outcome":"success"`, `"outcome":"failure"`, `"outcome":"replay"`, `"outcome":"lockout"`, `"outcome":"reset"`} {
		if !strings.Contains(out, ev) {
			t.Errorf("audit lacks %s", ev)
		}
	}
	if strings.Contains(out, next) || strings.Contains(out, e.Secret) || strings.Contains(out, recovery[0]) {
		t.Fatal("audit log contains a code or the secret")
	}
}

func TestTOTPPolicies(t *testing.T) {
	t.Parallel()
	t.Run("required mode refuses users who have not enrolled", func(t *testing.T) {
		// Bob paired his phone while 2FA was off; then the operator requires it.
		dir, mqttAddr := t.TempDir(), testutil.FreeAddr(t)
		g := startGateway(t, dir, func(c *server.Config) { c.MQTTAddr = mqttAddr })
		creds := provision(t, g, 1)
		addUser(t, g, "bob", creds[0].VIN, protocol.RoleOwner)
		runFleet(t, "tcp://"+mqttAddr, creds)
		_, _, key := loginKey(t, g, "bob", "", creds[0].VIN)
		waitSynced(t, g, creds[0].VIN)
		g.Close()
		g = startGateway(t, dir, func(c *server.Config) { c.MQTTAddr = mqttAddr; c.TwoFA.Mode = twofa.ModeRequired })
		waitOnline(t, g, creds[0].VIN)
		app, _, _ := loginKey(t, g, "bob", "")
		app.SetKey(key)
		expect(t, sendUntilAnswered(t, app, creds[0].VIN, protocol.ActionUnlock), protocol.ReplyRejected, protocol.ReasonTOTPEnrollmentRequired)
		expect(t, sendUntilAnswered(t, app, creds[0].VIN, protocol.ActionLock), protocol.ReplyExecuted, "")
	})
	t.Run("login requires totp: a password alone gets nothing", func(t *testing.T) {
		g := startGateway(t, t.TempDir(), func(c *server.Config) { c.TwoFA.Mode = twofa.ModeEnrolled; c.TwoFA.LoginRequiresTOTP = true })
		addUser(t, g, "carol", "", "")
		ctx := context.Background()
		// Before enrollment login works (mode enrolled); enroll and confirm.
		s, err := phone.Login(ctx, g.HTTPURL(), "carol", password, "")
		if err != nil {
			t.Fatal(err)
		}
		e, err := s.Client().EnrollTOTP(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		code, _ := totp.GenerateCode(e.Secret, now)
		if _, err := s.Client().ConfirmTOTP(ctx, code); err != nil {
			t.Fatal(err)
		}
		_, err = phone.Login(ctx, g.HTTPURL(), "carol", password, "")
		apiErr(t, err, 401, protocol.ReasonTOTPRequired)
		next, _ := totp.GenerateCode(e.Secret, now.Add(30*time.Second))
		if _, err := phone.Login(ctx, g.HTTPURL(), "carol", password, next); err != nil {
			t.Fatalf("login with password and code: %v", err)
		}
		// Re-enrolling needs proof.
		_, err = s.Client().EnrollTOTP(ctx, "")
		if err == nil {
			t.Fatal("re-enrollment without proof accepted")
		}
	})
}

// freshStep returns the current time once at least 10 s of the current 30 s TOTP step remain,
// waiting for the next step if needed, so a sequence of codes computed from it stays valid.
func freshStep() time.Time {
	now := time.Now()
	if left := 30 - now.Unix()%30; left < 10 {
		time.Sleep(time.Duration(left)*time.Second + 100*time.Millisecond)
		now = time.Now()
	}
	return now
}

// sendUntilAnswered retries while the car is reconnecting after a gateway restart (offline
// or expired), and returns the first other answer.
func sendUntilAnswered(t *testing.T, app *phone.App, vin string, action protocol.Action) protocol.Reply {
	t.Helper()
	return sendUntil(t, app, vin, action, func(r protocol.Reply) bool {
		return r.Reason == protocol.ReasonVehicleOffline || r.Status == protocol.ReplyExpired
	})
}

// A user without TOTP locked out by wrong passwords: the administrator's reset-2fa clears the
// lockout (there is no enrollment to remove) and says so; the user logs in again.
func TestAdminClearsPasswordLockout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGateway(t, dir, nil)
	addUser(t, g, "bob", "", "")
	c := newCLI(t, g, dir)
	for i := range 5 {
		if _, errs, code := c.app("wrong password\n", "login", "--user", "bob"); code == 0 {
			t.Fatalf("login %d with a wrong password succeeded: %s", i+1, errs)
		}
	}
	if _, errs, code := c.app(password+"\n", "login", "--user", "bob"); code != 1 || !strings.Contains(errs, "locked_out") {
		t.Fatalf("login during the lockout: %d %q", code, errs)
	}
	out, errs, code := c.admin("user", "reset-2fa", "bob")
	if code != 0 || !strings.Contains(out, "no TOTP enrollment") || !strings.Contains(out, "lockout is cleared") {
		t.Fatalf("reset-2fa of a password-only user: %d %q %q", code, out, errs)
	}
	if _, errs, code := c.app(password+"\n", "login", "--user", "bob"); code != 0 {
		t.Fatalf("login after the reset: %q", errs)
	}
	out, _, _ = c.admin("audit", "--user", "bob", "--limit", "50", "--json")
	if !strings.Contains(out, `"outcome":"reset_2fa"`) || !strings.Contains(out, "enrollment_removed=false") {
		t.Fatalf("the reset is not audited: %s", out)
	}
}
