package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"telematics/gateway/console"
	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// operatorClient is one operator's console session over HTTP: cookie jar and CSRF token.
type operatorClient struct {
	t    *testing.T
	base string
	hc   *http.Client
	csrf string
}

// consoleLogin enrolls name at its first login (TOTP from the enrollment's secret) and
// returns the full session.
func consoleLogin(t *testing.T, base, name, password string) *operatorClient {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &operatorClient{t: t, base: base, hc: &http.Client{Jar: jar, Timeout: time.Minute}}
	status, body := c.do("POST", "/console/api/login", console.LoginRequest{Operator: name, Password: password})
	var s console.Session
	if err := json.Unmarshal(body, &s); status != http.StatusOK || err != nil || s.Enroll == nil {
		t.Fatalf("first login of %s: %d %s", name, status, body)
	}
	c.csrf = s.CSRF
	status, body = c.do("POST", "/console/api/enroll", console.CodeRequest{Code: code(t, s.Enroll.Secret, time.Now())})
	if err := json.Unmarshal(body, &s); status != http.StatusOK || err != nil {
		t.Fatalf("enrollment of %s: %d %s", name, status, body)
	}
	c.csrf = s.CSRF
	return c
}

// do sends a JSON request (the CSRF token on unsafe methods unless hdr overrides it).
func (c *operatorClient) do(method, path string, body any, hdr ...string) (int, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		j, _ := json.Marshal(body)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if method != "GET" && c.csrf != "" {
		req.Header.Set(console.CSRFHeader, c.csrf)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	return res.StatusCode, out
}

func reasonOf(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Error
}

// The admin actions against a real gateway: reissue a car's credentials, clear a lockout,
// reset 2FA, remove a user from a car. A viewer is refused each by the server (403), a
// request without the CSRF token too, and each done is audited with the operator's name.
func TestAdminActionsOnAGateway(t *testing.T) {
	ctx := context.Background()
	cloud := harness.MustStart(t, harness.Options{PasswordParams: &cheap, Configure: func(cfg *server.Config) {
		cfg.TwoFA.Mode = twofa.ModeOff
	}})
	creds, err := cloud.Provision(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	vin := creds[0].VIN
	alice := &harness.Person{Name: "alice", Password: "alice password 1"}
	if err := cloud.AddUser(ctx, alice.Name, alice.Password, vin); err != nil {
		t.Fatal(err)
	}
	if err := alice.Login(ctx, cloud); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Enroll(ctx, cloud); err != nil {
		t.Fatal(err)
	}
	admin := cloud.Client()
	for name, role := range map[string]string{"olga": "admin", "vera": "viewer"} {
		if _, err := admin.AddOperator(ctx, name, role, opPassword); err != nil {
			t.Fatal(err)
		}
	}
	olga := consoleLogin(t, cloud.HTTPURL(), "olga", opPassword)
	vera := consoleLogin(t, cloud.HTTPURL(), "vera", opPassword)

	actions := []struct{ method, path string }{
		{"POST", "/console/api/cars/" + vin + "/credentials"},
		{"POST", "/console/api/users/alice/unlock"},
		{"POST", "/console/api/users/alice/reset-2fa"},
		{"DELETE", "/console/api/cars/" + vin + "/users/alice"},
	}
	for _, a := range actions {
		if status, body := vera.do(a.method, a.path, map[string]string{}); status != http.StatusForbidden || reasonOf(body) != string(protocol.ReasonForbidden) {
			t.Errorf("viewer's %s %s: %d %s", a.method, a.path, status, body)
		}
		if status, body := olga.do(a.method, a.path, map[string]string{}, console.CSRFHeader, "wrong"); status != http.StatusForbidden {
			t.Errorf("admin's %s %s without the CSRF token: %d %s", a.method, a.path, status, body)
		}
	}

	// Users page before: alice enrolled, owner of the car.
	var users console.Users
	status, body := vera.do("GET", "/console/api/users", nil)
	if err := json.Unmarshal(body, &users); status != http.StatusOK || err != nil || len(users.Users) != 1 ||
		!users.Users[0].Enrolled || len(users.Users[0].Cars) != 1 || users.Users[0].Cars[0].VIN != vin {
		t.Fatalf("users: %d %s", status, body)
	}

	status, body = olga.do("POST", "/console/api/cars/"+vin+"/credentials", map[string]string{})
	var cred protocol.Credentials
	if err := json.Unmarshal(body, &cred); status != http.StatusOK || err != nil || cred.VIN != vin || cred.Token == "" || cred.Token == creds[0].Token {
		t.Errorf("reissue: %d %.200s", status, body)
	}
	if status, body := olga.do("POST", "/console/api/cars/1HGCM82633A004352/credentials", map[string]string{}); status != http.StatusNotFound {
		t.Errorf("reissue for an unknown car: %d %s", status, body)
	}
	if status, body := olga.do("POST", "/console/api/cars/nope/credentials", map[string]string{}); status != http.StatusBadRequest {
		t.Errorf("reissue for a malformed VIN: %d %s", status, body)
	}
	if status, body := olga.do("POST", "/console/api/users/alice/unlock", map[string]string{}); status != http.StatusOK {
		t.Errorf("unlock: %d %s", status, body)
	}
	status, body = olga.do("POST", "/console/api/users/alice/reset-2fa", map[string]string{})
	var reset console.Reset2FAResult
	if err := json.Unmarshal(body, &reset); status != http.StatusOK || err != nil || !reset.EnrollmentRemoved {
		t.Errorf("reset 2FA: %d %s", status, body)
	}
	if status, body := olga.do("POST", "/console/api/users/nobody/reset-2fa", map[string]string{}); status != http.StatusNotFound {
		t.Errorf("reset 2FA of an unknown user: %d %s", status, body)
	}
	status, body = olga.do("DELETE", "/console/api/cars/"+vin+"/users/alice", nil)
	var removed console.RemoveResult
	if err := json.Unmarshal(body, &removed); status != http.StatusOK || err != nil || removed.User != "alice" {
		t.Errorf("remove alice from the car: %d %s", status, body)
	}
	if status, body := olga.do("DELETE", "/console/api/cars/"+vin+"/users/alice", nil); status != http.StatusBadRequest {
		t.Errorf("remove alice again: %d %s", status, body)
	}

	// Users page after: no enrollment, no car.
	status, body = olga.do("GET", "/console/api/users", nil)
	if err := json.Unmarshal(body, &users); status != http.StatusOK || err != nil || len(users.Users) != 1 ||
		users.Users[0].Enrolled || len(users.Users[0].Cars) != 0 {
		t.Errorf("users after: %d %s", status, body)
	}

	evs, err := admin.Audit(ctx, api.AuditQuery{Kind: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"credentials_reissued": false, "lockout_cleared": false, "reset_2fa": false, "user_removed": false}
	for _, ev := range evs {
		if _, ok := want[ev.Outcome]; ok && ev.ClientID == "console:olga" {
			want[ev.Outcome] = true
		}
		if strings.Contains(ev.Detail, cred.Token) {
			t.Errorf("audit holds the token: %+v", ev)
		}
	}
	for outcome, seen := range want {
		if !seen {
			t.Errorf("no %s audited with console:olga in %+v", outcome, evs)
		}
	}
}
