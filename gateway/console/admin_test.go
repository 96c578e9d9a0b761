package console_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
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

// The console's reissue with a device certificate, as `gateway admin vehicle reissue --cert`:
// the answer holds the certificate (signed by the gateway's device CA, naming the car) and its
// key once; the car page then says the car has one; the action is audited with the operator's
// name and the certificate's serial, never the key. A viewer is refused by the server.
func TestReissueWithDeviceCertificate(t *testing.T) {
	ctx := context.Background()
	cloud := harness.MustStart(t, harness.Options{PasswordParams: &cheap, Configure: func(cfg *server.Config) {
		cfg.TwoFA.Mode = twofa.ModeOff
	}})
	creds, err := cloud.Provision(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	vin := creds[0].VIN
	admin := cloud.Client()
	for name, role := range map[string]string{"olga": "admin", "vera": "viewer"} {
		if _, err := admin.AddOperator(ctx, name, role, opPassword); err != nil {
			t.Fatal(err)
		}
	}
	olga := consoleLogin(t, cloud.HTTPURL(), "olga", opPassword)
	vera := consoleLogin(t, cloud.HTTPURL(), "vera", opPassword)
	path := "/console/api/cars/" + vin + "/credentials"
	carPage := func() console.CarPage {
		t.Helper()
		var p console.CarPage
		status, body := vera.do("GET", "/console/api/cars/"+vin, nil)
		if err := json.Unmarshal(body, &p); status != http.StatusOK || err != nil {
			t.Fatalf("car page: %d %s", status, body)
		}
		return p
	}
	if carPage().DeviceCert {
		t.Fatal("a car provisioned without a certificate shows one")
	}

	if status, body := vera.do("POST", path, api.ReissueRequest{Cert: true}); status != http.StatusForbidden || reasonOf(body) != string(protocol.ReasonForbidden) {
		t.Errorf("viewer's reissue with a certificate: %d %s", status, body)
	}
	if status, body := olga.do("POST", path, api.ReissueRequest{Cert: true}, console.CSRFHeader, "wrong"); status != http.StatusForbidden {
		t.Errorf("reissue without the CSRF token: %d %s", status, body)
	}
	if status, body := olga.do("POST", path, json.RawMessage(`{"cert":"yes"}`)); status != http.StatusBadRequest {
		t.Errorf("reissue with a malformed body: %d %s", status, body)
	}
	if evs, err := admin.Audit(ctx, api.AuditQuery{VIN: vin, Kind: "admin"}); err != nil || len(evs) != 0 {
		t.Fatalf("refused reissues audited as done: %+v %v", evs, err)
	}

	status, body := olga.do("POST", path, api.ReissueRequest{Cert: true})
	var cred protocol.Credentials
	if err := json.Unmarshal(body, &cred); status != http.StatusOK || err != nil || cred.Token == "" || cred.Token == creds[0].Token {
		t.Fatalf("reissue with a certificate: %d %.300s", status, body)
	}
	block, _ := pem.Decode([]byte(cred.Cert))
	caBlock, _ := pem.Decode([]byte(cred.DeviceCA))
	keyBlock, _ := pem.Decode([]byte(cred.CertKey))
	if block == nil || caBlock == nil || keyBlock == nil {
		t.Fatalf("certificate, key or CA missing or not PEM: %.300s", body)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate not signed by the device CA for client auth: %v", err)
	}
	if cert.Subject.CommonName != vin {
		t.Errorf("certificate names %q, want %s", cert.Subject.CommonName, vin)
	}
	if !carPage().DeviceCert {
		t.Error("car page does not show the new device certificate")
	}

	// Without the box checked: new credentials, no certificate.
	status, body = olga.do("POST", path, api.ReissueRequest{})
	var plain protocol.Credentials
	if err := json.Unmarshal(body, &plain); status != http.StatusOK || err != nil || plain.Token == "" || plain.Cert != "" || plain.CertKey != "" {
		t.Fatalf("reissue without a certificate: %d %.300s", status, body)
	}
	if carPage().DeviceCert {
		t.Error("car page still shows the retired device certificate")
	}

	evs, err := admin.Audit(ctx, api.AuditQuery{VIN: vin, Kind: "admin"})
	if err != nil || len(evs) != 2 {
		t.Fatalf("audit: %+v %v", evs, err)
	}
	serial := fmt.Sprintf("%x", cert.SerialNumber)
	withCert, without := evs[1], evs[0] // newest first
	if withCert.Outcome != "credentials_reissued" || withCert.ClientID != "console:olga" || !strings.Contains(withCert.Detail, "device_cert=") ||
		!strings.EqualFold(strings.TrimPrefix(withCert.Detail, "device_cert="), serial) {
		t.Errorf("reissue with a certificate audited as %+v, want console:olga and serial %s", withCert, serial)
	}
	if without.Outcome != "credentials_reissued" || without.ClientID != "console:olga" || without.Detail != "" {
		t.Errorf("reissue without a certificate audited as %+v", without)
	}
	for _, ev := range evs {
		if strings.Contains(ev.Detail, "PRIVATE") || strings.Contains(ev.Detail, cred.Token) {
			t.Errorf("audit holds a secret: %+v", ev)
		}
	}
}
