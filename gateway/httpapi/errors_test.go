package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// Each class of failure is answered with its status and the JSON error body {"error",
// "message"}: the reason from the protocol's closed list and a message that says what to do.
func TestErrorAnswers(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.addUser("alice")
	appToken := f.login("alice").Token
	big := `{"username":"bob","password":"` + strings.Repeat("x", maxBody) + `"}`
	for _, tc := range []struct {
		name         string
		method, path string
		auth         string
		body         string
		status       int
		reason       protocol.Reason
		message      string // a part of the message
	}{
		{"malformed JSON", "POST", "/v1/login", "", `{"username":`, 400, protocol.ReasonBadRequest, "malformed JSON body"},
		{"JSON of the wrong type", "POST", "/v1/admin/users", "Bearer " + adminToken, `{"username":7}`, 400, protocol.ReasonBadRequest, "malformed JSON body"},
		{"empty body", "POST", "/v1/admin/users", "Bearer " + adminToken, ``, 400, protocol.ReasonBadRequest, "malformed JSON body"},
		{"oversized body", "POST", "/v1/admin/users", "Bearer " + adminToken, big, 400, protocol.ReasonBadRequest, "body larger than 65536 bytes"},
		{"no admin token", "GET", "/v1/admin/vehicles", "", "", 401, protocol.ReasonUnauthenticated, "admin token"},
		{"wrong admin token", "GET", "/v1/admin/vehicles", "Bearer nope", "", 401, protocol.ReasonUnauthenticated, "admin token"},
		{"admin token without Bearer", "GET", "/v1/admin/vehicles", adminToken, "", 401, protocol.ReasonUnauthenticated, "admin token"},
		// The admin API knows one credential, the admin token: an app token is not it.
		{"app token on an admin route", "GET", "/v1/admin/users", "Bearer " + appToken, "", 401, protocol.ReasonUnauthenticated, "admin token"},
		{"no app token", "GET", "/v1/session", "", "", 401, protocol.ReasonUnauthenticated, "missing bearer token"},
		{"not a token", "GET", "/v1/keys", "Bearer x.y.z", "", 401, protocol.ReasonUnauthenticated, "log in again"},
		{"admin token on an app route", "GET", "/v1/2fa", "Bearer " + adminToken, "", 401, protocol.ReasonUnauthenticated, "log in again"},
		{"not a VIN", "GET", "/v1/admin/vehicles/nope", "Bearer " + adminToken, "", 400, protocol.ReasonBadRequest, `"nope" is not a VIN`},
		{"unknown car", "GET", "/v1/admin/vehicles/" + vinA, "Bearer " + adminToken, "", 404, protocol.ReasonVehicleUnknown, "no vehicle " + vinA},
		{"unknown user", "POST", "/v1/admin/users/nobody/disable", "Bearer " + adminToken, "", 404, protocol.ReasonBadRequest, "no user nobody"},
		{"not a user name", "POST", "/v1/admin/users/Bad!/disable", "Bearer " + adminToken, "", 400, protocol.ReasonBadRequest, "not a user name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := f.do(tc.method, tc.path, tc.auth, strings.NewReader(tc.body))
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			e := errorBody(t, r)
			if e.Error != tc.reason || !strings.Contains(e.Message, tc.message) {
				t.Fatalf("answer %+v, want %s with %q", e, tc.reason, tc.message)
			}
		})
	}
	// The oversized user was not made, nor anything audited for it.
	if us, _ := f.api.Store.ListUsers(); len(us) != 1 {
		t.Fatalf("users after the refusals: %v", us)
	}
}

// A path no endpoint has, and a method an endpoint does not take, are answered in the API's
// error form like every other refusal (they were ServeMux's plain text "404 page not found"
// and "Method Not Allowed", which api.Client showed as "gateway answered 405 ").
func TestRouteRefusalsAreJSONErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
		message      string
	}{
		{"GET", "/v1/login", 405, "POST", "/v1/login does not take GET; it takes POST"},
		{"DELETE", "/v1/admin/vehicles", 405, "GET, HEAD, POST", "it takes GET, HEAD, POST"},
		{"GET", "/v1/nothing", 404, "", "no endpoint /v1/nothing"},
		{"GET", "/metrics", 404, "", "no endpoint /metrics"}, // no Metrics handler in this API
	} {
		r := f.do(tc.method, tc.path, "Bearer "+adminToken, nil)
		e := errorBody(t, r)
		if r.status != tc.status || e.Error != protocol.ReasonBadRequest || !strings.Contains(e.Message, tc.message) ||
			r.header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d %+v, Allow %q", tc.method, tc.path, r.status, e, r.header.Get("Allow"))
		}
	}
	err := f.admin.Do(context.Background(), "PUT", "/v1/login", nil, nil)
	wantError(t, err, 405, protocol.ReasonBadRequest)
}

// A body of exactly maxBody bytes is read; fields a request type does not have are ignored
// (a newer client's extra fields do not break an older gateway).
func TestBodyAtTheBoundAndUnknownFieldsAccepted(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	body := `{"username":"bob","password":"` + password + `","role":"owner","pad":"`
	body += strings.Repeat("x", maxBody-len(body)-2) + `"}`
	if len(body) != maxBody {
		t.Fatalf("body of %d bytes", len(body))
	}
	r := f.do("POST", "/v1/admin/users", "Bearer "+adminToken, strings.NewReader(body))
	if r.status != http.StatusCreated {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	f.login("bob")
}

// The admin API answers loopback clients only unless AllowRemote; the token is still needed.
func TestAdminLoopbackOnly(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	serve := func(allowRemote bool, remote, auth string) *httptest.ResponseRecorder {
		f.api.AllowRemote = allowRemote
		req := httptest.NewRequest("GET", "/v1/admin/vehicles", nil)
		req.RemoteAddr = remote
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		f.api.Handler().ServeHTTP(w, req)
		return w
	}
	w := serve(false, "192.0.2.1:40000", "Bearer "+adminToken)
	if e := errorBody(t, raw{w.Code, w.Header(), w.Body.Bytes()}); w.Code != 403 || e.Error != protocol.ReasonForbidden || !strings.Contains(e.Message, "admin_allow_remote") {
		t.Fatalf("remote admin: %d %+v", w.Code, e)
	}
	if w := serve(false, "[::1]:40000", "Bearer "+adminToken); w.Code != 200 {
		t.Fatalf("IPv6 loopback: %d %s", w.Code, w.Body)
	}
	if w := serve(true, "192.0.2.1:40000", "Bearer "+adminToken); w.Code != 200 {
		t.Fatalf("remote admin allowed: %d %s", w.Code, w.Body)
	}
	if w := serve(true, "192.0.2.1:40000", ""); w.Code != 401 {
		t.Fatalf("remote admin allowed, no token: %d %s", w.Code, w.Body)
	}
}

// GET /v1/session tells the token's user, expiry and broker; an expired token is refused.
func TestAppTokenRefusedOnceExpired(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.addUser("alice")
	c := f.login("alice")
	ctx := context.Background()
	if s, err := c.Session(ctx); err != nil || s.User != "alice" || s.BrokerURL != brokerURL ||
		s.ExpiresAtMs != f.clock.Now().Add(appTTL).UnixMilli() {
		t.Fatalf("session: %+v %v", s, err)
	}
	f.clock.Advance(appTTL + 1)
	_, err := c.Session(ctx)
	wantError(t, err, 401, protocol.ReasonUnauthenticated)
}

// StatusOf gives each reason the HTTP status docs/PROTOCOL.md's table gives it.
func TestStatusOfEveryReason(t *testing.T) {
	t.Parallel()
	want := map[protocol.Reason]int{
		protocol.ReasonBadRequest: 400, protocol.ReasonUnauthenticated: 401, protocol.ReasonForbidden: 403,
		protocol.ReasonVehicleUnknown: 404, protocol.ReasonVehicleOffline: 503, protocol.ReasonTOTPRequired: 401,
		protocol.ReasonTOTPInvalid: 401, protocol.ReasonTOTPReplayed: 401, protocol.ReasonTOTPEnrollmentRequired: 403,
		protocol.ReasonLockedOut: 429, protocol.ReasonRateLimited: 429, protocol.ReasonDuplicate: 409,
		protocol.ReasonSignatureInvalid: 401, protocol.ReasonKeyUnknown: 403, protocol.ReasonKeyRevoked: 403,
		protocol.ReasonKeyExpired: 403, protocol.ReasonInternal: 500,
		protocol.ReasonExpired: 500, // never an HTTP answer
	}
	for _, r := range protocol.Reasons {
		w, ok := want[r]
		if !ok {
			t.Errorf("reason %s has no status in this test (nor in docs/PROTOCOL.md?)", r)
			continue
		}
		if got := StatusOf(r); got != w {
			t.Errorf("StatusOf(%s) = %d, want %d", r, got, w)
		}
	}
}

// Fail shows a refusal's own message without repeating the reason, and hides internal errors
// behind a pointer to the log, which gets the detail.
func TestFailShowsRefusalsAndHidesInternals(t *testing.T) {
	t.Parallel()
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	for _, tc := range []struct {
		err     error
		status  int
		reason  protocol.Reason
		message string
	}{
		{protocol.Refuse(protocol.ReasonLockedOut, "try again after %s", "noon"), 429, protocol.ReasonLockedOut, "try again after noon"},
		{fmt.Errorf("assign: %w", protocol.Refuse(protocol.ReasonForbidden, "not yours")), 403, protocol.ReasonForbidden, "not yours"},
		{errors.New("bolt: disk on fire at /var/secret"), 500, protocol.ReasonInternal, "internal error; see the gateway log"},
	} {
		w := httptest.NewRecorder()
		Fail(w, log, tc.err)
		e := errorBody(t, raw{w.Code, w.Header(), w.Body.Bytes()})
		if w.Code != tc.status || e.Error != tc.reason || e.Message != tc.message {
			t.Errorf("Fail(%v): %d %+v, want %d %s %q", tc.err, w.Code, e, tc.status, tc.reason, tc.message)
		}
	}
	if !strings.Contains(logged.String(), "disk on fire") {
		t.Fatalf("the internal error was not logged: %s", logged.String())
	}
}

// api.Client turns every error answer into an *api.Error with the status, reason and message.
func TestClientErrorsCarryReasonAndMessage(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	_, err := f.admin.Vehicle(context.Background(), vinA)
	ae := wantError(t, err, 404, protocol.ReasonVehicleUnknown)
	if ae.Error() != "vehicle_unknown: no vehicle "+vinA {
		t.Fatalf("error text %q", ae.Error())
	}
	var out api.VehicleView
	err = f.admin.WithToken("wrong").Do(context.Background(), "GET", "/v1/admin/vehicles/"+vinA, nil, &out)
	wantError(t, err, 401, protocol.ReasonUnauthenticated)
}
