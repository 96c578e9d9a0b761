package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
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
}

func (c cli) app(stdin string, args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := appcmd.Run(context.Background(), append([]string{"--gateway", c.g.HTTPURL(), "--session", c.session}, args...),
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
	if _, err := exec.LookPath("oathtool"); err != nil {
		t.Skip("oathtool not installed (Debian package oathtool; .ci/run installs it)")
	}
	dir := t.TempDir()
	g := startGateway(t, dir, nil)
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	runFleet(t, g.BrokerURL(), creds)
	waitOnline(t, g, vin)
	c := cli{t: t, g: g, session: filepath.Join(t.TempDir(), "s.json"), dir: dir}
	if _, errs, code := c.app(password+"\n", "login", "--user", "alice"); code != 0 {
		t.Fatal(errs)
	}
	// Not enrolled, mode "enrolled": no code asked.
	if out, errs, code := c.app("", "send", vin, "unlock"); code != 0 {
		t.Fatalf("unlock before enrollment: %s %s", out, errs)
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

	now := time.Now()
	out, errs, code = c.app("", "totp", "confirm", oathtool(t, e.Secret, now))
	if code != 0 || strings.Count(out, "\n  ") != 10 {
		t.Fatalf("confirm: %d %q %s", code, out, errs)
	}
	recovery := strings.Fields(strings.SplitN(out, "\n", 2)[1])

	// Enrolled now: unlock without a code is refused, with a fresh oathtool code executed.
	if out, _, code := c.app("", "send", vin, "unlock"); code != 1 || !strings.Contains(out, "totp_required") {
		t.Fatalf("unlock without code: %d %q", code, out)
	}
	// lock is not a guarded action.
	if out, errs, code := c.app("", "send", vin, "lock"); code != 0 {
		t.Fatalf("lock: %s %s", out, errs)
	}
	next := oathtool(t, e.Secret, now.Add(30*time.Second)) // the confirm used this step's code
	if out, errs, code := c.app("", "send", vin, "unlock", "--totp", next); code != 0 {
		t.Fatalf("unlock with oathtool code: %q %s", out, errs)
	}
	// Step-up: the same session needs no new code for step_up_ttl.
	if out, errs, code := c.app("", "send", vin, "open_trunk"); code != 0 {
		t.Fatalf("open_trunk in step-up: %q %s", out, errs)
	}
	// A code presented is always verified: the used code is a replay even under step-up.
	if out, _, code := c.app("", "send", vin, "unlock", "--totp", next); code != 1 || !strings.Contains(out, "totp_replayed") {
		t.Fatalf("replayed code: %d %q", code, out)
	}
	// Another session (a new login) is not elevated.
	other := cli{t: t, g: g, session: filepath.Join(t.TempDir(), "s2.json"), dir: dir}
	other.app(password+"\n", "login", "--user", "alice")
	if out, _, code := other.app("", "send", vin, "unlock"); code != 1 || !strings.Contains(out, "totp_required") {
		t.Fatalf("second session elevated: %d %q", code, out)
	}
	// Wrong codes: four failures, then a fifth locks the user out; a correct code is refused too.
	wrong := "000000"
	if wrong == next || wrong == oathtool(t, e.Secret, time.Now()) {
		wrong = "999999"
	}
	for i := 0; i < 5; i++ {
		out, _, _ := other.app("", "send", vin, "unlock", "--totp", wrong)
		want := "totp_invalid"
		if i == 4 {
			want = "locked_out"
		}
		if !strings.Contains(out, want) {
			t.Fatalf("failure %d: %q, want %s", i+1, out, want)
		}
	}
	if out, _, _ := other.app("", "send", vin, "unlock", "--totp", recovery[0]); !strings.Contains(out, "locked_out") {
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
	out, _, _ = c.admin("audit", "--user", "alice", "--kind", "2fa", "--limit", "200")
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
	t.Run("required mode refuses users who have not enrolled", func(t *testing.T) {
		g := startGateway(t, t.TempDir(), func(c *server.Config) { c.TwoFA.Mode = twofa.ModeRequired })
		creds := provision(t, g, 1)
		addUser(t, g, "bob", creds[0].VIN, protocol.RoleOwner)
		runFleet(t, g.BrokerURL(), creds)
		waitOnline(t, g, creds[0].VIN)
		app := login(t, g, "bob", "")
		expect(t, send(t, app, creds[0].VIN, protocol.ActionUnlock), protocol.ReplyRejected, protocol.ReasonTOTPEnrollmentRequired)
		expect(t, send(t, app, creds[0].VIN, protocol.ActionLock), protocol.ReplyExecuted, "")
	})
	t.Run("login requires totp: a password alone gets nothing", func(t *testing.T) {
		g := startGateway(t, t.TempDir(), func(c *server.Config) { c.TwoFA.LoginRequiresTOTP = true })
		addUser(t, g, "carol", "", "")
		ctx := context.Background()
		// Before enrollment login works (mode enrolled); enroll and confirm.
		s, err := phone.Login(ctx, g.HTTPURL(), "carol", password, "")
		if err != nil {
			t.Fatal(err)
		}
		var e struct {
			Secret string `json:"secret"`
		}
		if err := phone.Call(ctx, http.MethodPost, g.HTTPURL()+"/v1/2fa/enroll", s.Token, map[string]string{}, &e); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		code, _ := totp.GenerateCode(e.Secret, now)
		if err := phone.Call(ctx, http.MethodPost, g.HTTPURL()+"/v1/2fa/confirm", s.Token, map[string]string{"code": code}, nil); err != nil {
			t.Fatal(err)
		}
		_, err = phone.Login(ctx, g.HTTPURL(), "carol", password, "")
		apiErr(t, err, 401, protocol.ReasonTOTPRequired)
		next, _ := totp.GenerateCode(e.Secret, now.Add(30*time.Second))
		if _, err := phone.Login(ctx, g.HTTPURL(), "carol", password, next); err != nil {
			t.Fatalf("login with password and code: %v", err)
		}
		// Re-enrolling needs proof.
		err = phone.Call(ctx, http.MethodPost, g.HTTPURL()+"/v1/2fa/enroll", s.Token, map[string]string{}, nil)
		if err == nil {
			t.Fatal("re-enrollment without proof accepted")
		}
	})
}
