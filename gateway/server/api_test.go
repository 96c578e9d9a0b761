package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admincli "telematics/gateway/admin"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
	"telematics/vehicle-sim/appcmd"
)

func apiErr(t *testing.T, err error, status int, reason protocol.Reason) {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != status || ae.Reason != reason {
		t.Fatalf("got %v, want HTTP %d %s", err, status, reason)
	}
}

func TestSecretsFilesAndModes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	startGateway(t, dir, nil)
	for name, want := range map[string]os.FileMode{server.SigningKeyFile: 0o600, server.AdminTokenFile: 0o600, server.DBFile: 0o600, server.PublicKeyFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	if _, err := sign.LoadPublicPEM(filepath.Join(dir, server.PublicKeyFile)); err != nil {
		t.Fatalf("gateway.pub unusable by the broker: %v", err)
	}
}

func TestSecondGatewayOnSameDataDirFailsClearly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	startGateway(t, dir, nil)
	cfg := server.DefaultConfig()
	cfg.Data = dir
	cfg.MQTTAddr, cfg.WSAddr, cfg.HTTPAddr = "127.0.0.1:0", "", "127.0.0.1:0"
	cfg.TLS.MQTTAddr, cfg.TLS.WSAddr, cfg.TLS.HTTPAddr = "", "", "" // fixed ports would collide with parallel tests
	_, err := server.Start(context.Background(), cfg, server.Options{PasswordParams: &cheap})
	if err == nil || !strings.Contains(err.Error(), "another") {
		t.Fatalf("second gateway on the same data dir: %v", err)
	}
}

func TestAdminAPI(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), nil)
	ctx := context.Background()
	call := func(bearer, method, path string, in, out any) error {
		return api.NewClient(g.HTTPURL(), bearer).Do(ctx, method, path, in, out)
	}
	apiErr(t, call("", http.MethodGet, "/v1/admin/vehicles", nil, nil), 401, protocol.ReasonUnauthenticated)
	apiErr(t, call("wrong", http.MethodGet, "/v1/admin/vehicles", nil, nil), 401, protocol.ReasonUnauthenticated)
	tok := g.AdminToken()
	apiErr(t, call(tok, http.MethodPost, "/v1/admin/vehicles", api.AddVehiclesRequest{VINs: []string{"IOQ"}}, nil), 400, protocol.ReasonBadRequest)
	apiErr(t, call(tok, http.MethodPost, "/v1/admin/vehicles", api.AddVehiclesRequest{}, nil), 400, protocol.ReasonBadRequest)
	var creds []protocol.Credentials
	if err := call(tok, http.MethodPost, "/v1/admin/vehicles", api.AddVehiclesRequest{VINs: []string{"1HGCM82633A004352"}, Count: 2}, &creds); err != nil {
		t.Fatal(err)
	}
	if len(creds) != 3 || creds[0].VIN != "1HGCM82633A004352" || creds[0].ClientID != creds[0].VIN || creds[0].Username != creds[0].VIN {
		t.Fatalf("credentials: %+v", creds)
	}
	// The token is a vehicle token for exactly that VIN.
	c, err := token.NewVerifier(nil, g.Signer().Public()).Verify(creds[1].Token)
	if err != nil || c.Subject != creds[1].VIN || c.Role != protocol.RoleVehicle {
		t.Fatalf("vehicle token: %+v %v", c, err)
	}
	apiErr(t, call(tok, http.MethodPost, "/v1/admin/vehicles", api.AddVehiclesRequest{VINs: []string{"1HGCM82633A004352"}}, nil), 409, protocol.ReasonDuplicate)
	apiErr(t, call(tok, http.MethodPost, "/v1/admin/users", api.AddUserRequest{Username: "Bad-Name", Password: password}, nil), 400, protocol.ReasonBadRequest)
	apiErr(t, call(tok, http.MethodPost, "/v1/admin/users", api.AddUserRequest{Username: "gateway", Password: password}, nil), 400, protocol.ReasonBadRequest)
	apiErr(t, call(tok, http.MethodPost, "/v1/admin/users", api.AddUserRequest{Username: "carol", Password: "short"}, nil), 400, protocol.ReasonBadRequest)
	if err := call(tok, http.MethodPost, "/v1/admin/users", api.AddUserRequest{Username: "carol", Password: password}, nil); err != nil {
		t.Fatal(err)
	}
	apiErr(t, call(tok, http.MethodPost, "/v1/admin/users", api.AddUserRequest{Username: "carol", Password: password}, nil), 409, protocol.ReasonDuplicate)
	apiErr(t, call(tok, http.MethodPost, "/v1/admin/vehicles/1HGCM82633A004352/assign", api.AssignRequest{User: "carol", Role: "king"}, nil), 400, protocol.ReasonBadRequest)
	apiErr(t, call(tok, http.MethodPost, "/v1/admin/vehicles/2HGCM82633A004352/assign", api.AssignRequest{User: "carol", Role: "owner"}, nil), 404, protocol.ReasonVehicleUnknown)
	apiErr(t, call(tok, http.MethodGet, "/v1/admin/vehicles/2HGCM82633A004352", nil, nil), 404, protocol.ReasonVehicleUnknown)
	// Malformed and oversized bodies.
	req, _ := http.NewRequest(http.MethodPost, g.HTTPURL()+"/v1/admin/users", strings.NewReader("{"+strings.Repeat(" ", 70_000)))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("oversized body: HTTP %d", resp.StatusCode)
	}
}

func TestLogin(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), nil)
	addUser(t, g, "dave", "", "")
	ctx := context.Background()
	_, err := phone.Login(ctx, g.HTTPURL(), "dave", "wrong password!", "")
	apiErr(t, err, 401, protocol.ReasonUnauthenticated)
	_, err = phone.Login(ctx, g.HTTPURL(), "nobody", password, "")
	apiErr(t, err, 401, protocol.ReasonUnauthenticated)
	s, err := phone.Login(ctx, g.HTTPURL(), "dave", password, "")
	if err != nil {
		t.Fatal(err)
	}
	if s.BrokerURL != g.BrokerURL() || s.ClientIDPrefix != "dave-" {
		t.Fatalf("session: %+v", s)
	}
	c, err := token.NewVerifier(nil, g.Signer().Public()).Verify(s.Token)
	if err != nil || c.Subject != "dave" || c.Role != protocol.RoleApp {
		t.Fatalf("app token: %+v %v", c, err)
	}
	evs, _ := g.Audit().Query(auditFilterUser("dave"))
	var refused, ok int
	for _, e := range evs {
		if e.Kind == "login" && e.Outcome == "refused" {
			refused++
		}
		if e.Kind == "login" && e.Outcome == "ok" {
			ok++
		}
		if strings.Contains(e.Detail, password) {
			t.Fatal("audit record contains the password")
		}
	}
	if refused != 1 || ok != 1 {
		t.Fatalf("login audit: %d refused, %d ok", refused, ok)
	}
}

// The command-line clients against a running gateway: admin provisioning, app login and send.
func TestAdminAndAppCommandLines(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGateway(t, dir, nil)
	ctx := context.Background()
	run := func(stdin string, args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		base := []string{"--server", g.HTTPURL(), "--token-file", filepath.Join(dir, server.AdminTokenFile)}
		code := admincli.Run(ctx, append(base, args...), admincli.Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb})
		return out.String(), errb.String(), code
	}
	out, errs, code := run("", "vehicle", "add", "--count", "2", "--json")
	if code != 0 {
		t.Fatalf("vehicle add: %d %s", code, errs)
	}
	var creds []protocol.Credentials
	if err := json.Unmarshal([]byte(out), &creds); err != nil || len(creds) != 2 {
		t.Fatalf("vehicle add --json: %v %q", err, out)
	}
	if _, errs, code = run(password+"\n", "user", "add", "erin"); code != 0 {
		t.Fatalf("user add: %s", errs)
	}
	if _, errs, code = run("", "vehicle", "assign", creds[0].VIN, "erin", "--role", "owner"); code != 0 {
		t.Fatalf("assign: %s", errs)
	}
	if out, _, code = run("", "vehicle", "list"); code != 0 || !strings.Contains(out, creds[1].VIN) || !strings.Contains(out, "erin:owner") {
		t.Fatalf("vehicle list: %d %q", code, out)
	}
	if out, _, code = run("", "vehicle", "show", creds[0].VIN, "--json"); code != 0 || !strings.Contains(out, `"erin": "owner"`) {
		t.Fatalf("vehicle show: %d %q", code, out)
	}
	if _, errs, code = run("", "vehicle", "assign", creds[0].VIN, "erin"); code != 2 || !strings.Contains(errs, "--role") {
		t.Fatalf("assign without role: %d %q", code, errs)
	}
	if _, errs, code = run("", "vehicle", "show", "1HGCM82633A004352"); code != 1 || !strings.Contains(errs, "vehicle_unknown") {
		t.Fatalf("show unknown: %d %q", code, errs)
	}
	if _, errs, code = run("", "audit", "--kind", "bogus"); code != 1 || !strings.Contains(errs, "want one of command, result") {
		t.Fatalf("audit with an unknown kind: %d %q", code, errs)
	}
	if out, _, code = run("", "audit", "--kind", "admin", "--user", "erin&kind=login"); code != 0 || strings.TrimSpace(out) != "" {
		t.Fatalf("audit for a user name with query syntax in it: %d %q", code, out)
	}
	// reissue --json has vehicle add --json's shape, so it feeds vehicle-sim run --fleet.
	out, errs, code = run("", "vehicle", "reissue", creds[1].VIN, "--json")
	var reissued []protocol.Credentials
	if code != 0 || json.Unmarshal([]byte(out), &reissued) != nil || len(reissued) != 1 ||
		reissued[0].VIN != creds[1].VIN || reissued[0].Token == creds[1].Token {
		t.Fatalf("vehicle reissue --json: %d %q %s", code, out, errs)
	}
	creds[1] = reissued[0]

	runFleet(t, g.BrokerURL(), creds)
	waitOnline(t, g, creds[0].VIN)
	session := filepath.Join(t.TempDir(), "session.json")
	keyFile := filepath.Join(t.TempDir(), "phone.key")
	app := func(stdin string, args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := appcmd.Run(ctx, append([]string{"--gateway", g.HTTPURL(), "--session", session, "--key", keyFile}, args...),
			appcmd.Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
		return out.String(), errb.String(), code
	}
	if _, errs, code := app("wrong password!\n", "login", "--user", "erin"); code != 1 || !strings.Contains(errs, "unauthenticated") {
		t.Fatalf("login with wrong password: %d %q", code, errs)
	}
	if _, errs, code := app(password+"\n", "login", "--user", "erin"); code != 0 {
		t.Fatalf("login: %s", errs)
	}
	if fi, err := os.Stat(session); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("session file: %v %v", fi, err)
	}
	if _, errs, code := app("", "key", "create"); code != 0 {
		t.Fatalf("key create: %s", errs)
	}
	if _, errs, code := app("", "key", "pair", creds[0].VIN); code != 0 {
		t.Fatalf("key pair: %s", errs)
	}
	waitSynced(t, g, creds[0].VIN)
	out, errs, code = app("", "send", creds[0].VIN, "unlock", "--json")
	if code != 0 {
		t.Fatalf("send unlock: %d %s %s", code, out, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var last protocol.Reply
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Status != protocol.ReplyExecuted || len(lines) != 2 {
		t.Fatalf("send --json output: %q", out)
	}
	if out, _, code = app("", "send", creds[1].VIN, "unlock", "--cloud-only"); code != 1 || !strings.Contains(out, "rejected: key_unknown") {
		t.Fatalf("send to a car not hers: %d %q", code, out)
	}
	if _, errs, code = app("", "send", "NOTAVIN", "unlock"); code != 2 || !strings.Contains(errs, "not a VIN") {
		t.Fatalf("send bad VIN: %d %q", code, errs)
	}
	// key list without a VIN: every car erin holds a role on (one), not the others.
	if out, errs, code = app("", "key", "list"); code != 0 || !strings.Contains(out, creds[0].VIN) || strings.Contains(out, creds[1].VIN) {
		t.Fatalf("key list: %d %q %s", code, out, errs)
	}
}

// A flood of logins is held to password_hash_concurrency argon2id hashes at once (each holds
// 19 MiB): the logins that cannot get a turn within password_hash_wait are refused with
// rate_limited, the others are answered, and the refusals are not password failures, so the
// user is not locked out by somebody else's flood.
func TestLoginFloodIsBounded(t *testing.T) {
	t.Parallel()
	cfg := server.DefaultConfig()
	cfg.Data = t.TempDir()
	cfg.MQTTAddr, cfg.WSAddr, cfg.HTTPAddr = "127.0.0.1:0", "", "127.0.0.1:0"
	cfg.TLS.MQTTAddr, cfg.TLS.WSAddr, cfg.TLS.HTTPAddr = "", "", "" // fixed ports would collide with parallel tests
	cfg.TwoFA.Mode = twofa.ModeEnrolled                             // the lockout counts password failures in this mode
	cfg.PasswordHashConcurrency, cfg.PasswordHashWait = 1, time.Millisecond
	// The real argon2id parameters: a hash takes long enough for the others to queue.
	g, err := server.Start(context.Background(), cfg, server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	addUser(t, g, "erin", "", "")

	ctx := context.Background()
	const logins = 20
	var wg sync.WaitGroup
	var ok, limited atomic.Int32
	for range logins {
		wg.Go(func() {
			_, err := phone.Login(ctx, g.HTTPURL(), "erin", password, "")
			var api *api.Error
			switch {
			case err == nil:
				ok.Add(1)
			case errors.As(err, &api) && api.Status == http.StatusTooManyRequests && api.Reason == protocol.ReasonRateLimited:
				limited.Add(1)
			default:
				t.Errorf("login: %v", err)
			}
		})
	}
	wg.Wait()
	// One hash at a time, the others may wait 1 ms for it: most are refused. At least as many
	// as the 5 password failures that would lock erin out.
	if ok.Load() == 0 || limited.Load() < 5 || ok.Load()+limited.Load() != logins {
		t.Fatalf("%d logins: %d ok, %d rate_limited; want some of each (5 or more refused) and nothing else", logins, ok.Load(), limited.Load())
	}
	if _, err := phone.Login(ctx, g.HTTPURL(), "erin", password, ""); err != nil {
		t.Fatalf("login after the flood: %v", err)
	}
}
