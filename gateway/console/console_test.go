package console

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/httpapi"
	"telematics/gateway/kv"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/internal/testutil"
	"telematics/pkg/protocol"
)

func TestFirstLoginEnrollsThenLoginNeedsCode(t *testing.T) {
	f := newFixture(t)
	b := f.browser()
	r, s := b.login("alice", "")
	if r.status != http.StatusOK || s.Stage != stageEnroll || s.Enroll == nil || s.Enroll.Secret == "" ||
		!strings.HasPrefix(s.Enroll.QRPNG, "data:image/png;base64,") {
		t.Fatalf("first login: %d %s", r.status, r.body)
	}
	var ck *http.Cookie
	for _, c := range b.hc.Jar.Cookies(mustURL(t, f.srv.URL)) {
		if c.Name == CookieName {
			ck = c
		}
	}
	if ck == nil {
		t.Fatal("no session cookie")
	}
	if h := r.header.Get("Set-Cookie"); !strings.Contains(h, "HttpOnly") || !strings.Contains(h, "SameSite=Strict") || strings.Contains(h, "Secure") {
		t.Errorf("cookie over plain HTTP: %q, want HttpOnly, SameSite=Strict, not Secure", h)
	}
	// The enrollment session may confirm, nothing else.
	if r := b.do("GET", "/console/api/fleet", nil); r.status != http.StatusForbidden || r.reason() != string(protocol.ReasonTOTPEnrollmentRequired) {
		t.Errorf("fleet with an enrollment session: %d %s", r.status, r.body)
	}
	if r := b.do("POST", "/console/api/enroll", CodeRequest{Code: "000000"}); r.status != http.StatusUnauthorized || r.reason() != string(protocol.ReasonTOTPInvalid) {
		t.Errorf("wrong confirming code: %d %s", r.status, r.body)
	}
	r = b.do("POST", "/console/api/enroll", CodeRequest{Code: f.code(s.Enroll.Secret)})
	var full Session
	_ = json.Unmarshal(r.body, &full)
	if r.status != http.StatusOK || full.Stage != stageFull || full.Role != "admin" || len(full.RecoveryCodes) != 10 {
		t.Fatalf("confirm: %d %s", r.status, r.body)
	}
	// A new token at the change of stage: the enrollment cookie no longer works.
	old := f.browser()
	old.hc.Jar.SetCookies(mustURL(t, f.srv.URL), []*http.Cookie{ck})
	if r := old.do("GET", "/console/api/session", nil); r.status != http.StatusUnauthorized {
		t.Errorf("enrollment cookie after confirmation: %d", r.status)
	}
	b.csrf = full.CSRF
	if r := b.do("GET", "/console/api/session", nil); r.status != http.StatusOK {
		t.Fatalf("session: %d %s", r.status, r.body)
	}

	f.clock.Advance(30 * time.Second)
	second := f.browser()
	if r, _ := second.login("alice", ""); r.status != http.StatusUnauthorized || r.reason() != string(protocol.ReasonTOTPRequired) {
		t.Errorf("enrolled operator without a code: %d %s", r.status, r.body)
	}
	code := f.code(s.Enroll.Secret)
	if r, s := second.login("alice", code); r.status != http.StatusOK || s.Stage != stageFull {
		t.Fatalf("login with a code: %d %s", r.status, r.body)
	}
	if r, _ := f.browser().login("alice", code); r.status != http.StatusUnauthorized || r.reason() != string(protocol.ReasonTOTPReplayed) {
		t.Errorf("replayed code: %d %s", r.status, r.body)
	}
	evs, err := f.log.Query(audit.Filter{User: "alice@console"})
	if err != nil || len(evs) == 0 {
		t.Fatalf("audit of alice@console: %v, %d events", err, len(evs))
	}
	for _, ev := range evs {
		if strings.Contains(ev.Detail, code) {
			t.Errorf("audit record holds the code: %+v", ev)
		}
	}
}

func TestLoginRefusals(t *testing.T) {
	f := newFixture(t)
	_, secret := f.enrolled("alice")
	cases := []struct {
		name   string
		body   any
		hdr    []string
		status int
		reason protocol.Reason
	}{
		{"wrong password", LoginRequest{Operator: "alice", Password: "nope", Code: "123456"}, nil, 401, protocol.ReasonUnauthenticated},
		{"unknown operator", LoginRequest{Operator: "mallory", Password: password}, nil, 401, protocol.ReasonUnauthenticated},
		{"wrong code", LoginRequest{Operator: "alice", Password: password, Code: "000000"}, nil, 401, protocol.ReasonTOTPInvalid},
		{"bad name", LoginRequest{Operator: "Alice Smith", Password: password}, nil, 400, protocol.ReasonBadRequest},
		{"no password", LoginRequest{Operator: "alice"}, nil, 400, protocol.ReasonBadRequest},
		{"huge code", LoginRequest{Operator: "alice", Password: password, Code: strings.Repeat("1", 100)}, nil, 400, protocol.ReasonBadRequest},
		{"not JSON", "{", nil, 400, protocol.ReasonBadRequest},
		{"other origin", LoginRequest{Operator: "alice", Password: password, Code: f.code(secret)}, []string{"Origin", "https://evil.example"}, 403, protocol.ReasonForbidden},
		{"cross-site fetch", LoginRequest{Operator: "alice", Password: password, Code: f.code(secret)}, []string{"Sec-Fetch-Site", "cross-site"}, 403, protocol.ReasonForbidden},
		{"form post", LoginRequest{Operator: "alice", Password: password, Code: f.code(secret)}, []string{"Content-Type", "application/x-www-form-urlencoded"}, 403, protocol.ReasonForbidden},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := f.browser().do("POST", "/console/api/login", tc.body, tc.hdr...)
			if r.status != tc.status || r.reason() != string(tc.reason) {
				t.Errorf("got %d %s, want %d %s", r.status, r.body, tc.status, tc.reason)
			}
		})
	}
	// Wrong codes lock the second factor out (twofa's lockout): then even the right code is
	// refused.
	for i := 0; i < 10; i++ {
		r, _ := f.browser().login("alice", "000000")
		if r.reason() == string(protocol.ReasonLockedOut) {
			if r, _ := f.browser().login("alice", f.code(secret)); r.reason() != string(protocol.ReasonLockedOut) {
				t.Errorf("right code during the lockout: %d %s", r.status, r.body)
			}
			return
		}
	}
	t.Error("ten wrong codes did not lock the operator out")
}

// One address's failed logins are limited across operator names (a password tried against
// every name), and a successful login gives its token back.
func TestLoginsLimitedPerAddress(t *testing.T) {
	f := newFixtureWith(t, func(d *Deps) { d.LoginLimit = httpapi.NewAddrLimiter(1, 3, d.Clock) })
	_, secret := f.enrolled("alice")
	if r, _ := f.browser().login("alice", f.code(secret)); r.status != 200 {
		t.Fatalf("first login: %d %s", r.status, r.body)
	}
	for i, name := range []string{"bob", "carol", "dave"} {
		r := f.browser().do("POST", "/console/api/login", LoginRequest{Operator: name, Password: "guess"})
		if r.status != 401 || r.reason() != string(protocol.ReasonUnauthenticated) {
			t.Fatalf("failed login %d: %d %s", i+1, r.status, r.body)
		}
	}
	r := f.browser().do("POST", "/console/api/login", LoginRequest{Operator: "erin", Password: "guess"})
	if r.status != 429 || r.reason() != string(protocol.ReasonRateLimited) {
		t.Fatalf("fourth failure from one address: %d %s, want 429 rate_limited", r.status, r.body)
	}
	if r, _ := f.browser().login("alice", f.code(secret)); r.status != 429 {
		t.Fatalf("right password from the limited address: %d %s, want 429", r.status, r.body)
	}
	f.clock.Advance(time.Minute) // one token back
	if r, _ := f.browser().login("alice", f.code(secret)); r.status != 200 {
		t.Fatalf("login after the bucket refilled: %d %s", r.status, r.body)
	}
}

// One operator's event streams are bounded apart from the total, so a session (or a script
// with it) cannot take every other operator's streams.
func TestStreamsBoundedPerOperator(t *testing.T) {
	f := newFixture(t)
	v, _ := f.enrolled("victor")
	for range maxStreamsPerOperator {
		v.events("").next(t)
	}
	if r := v.do("GET", "/console/api/events", nil); r.status != 503 || r.reason() != string(protocol.ReasonRateLimited) {
		t.Fatalf("stream %d of one operator: %d %s, want 503 rate_limited", maxStreamsPerOperator+1, r.status, r.body)
	}
	a, _ := f.enrolled("alice")
	if ev := a.events("").next(t); ev.event != "fleet" {
		t.Fatalf("another operator's stream: %+v, want the fleet first", ev)
	}
}

func TestEndpointsNeedASession(t *testing.T) {
	f := newFixture(t)
	for _, p := range []string{"/console/api/session", "/console/api/fleet", "/console/api/cars/1HGCM82633A004352", "/console/api/events", "/console/api/operators"} {
		if r := f.browser().do("GET", p, nil); r.status != http.StatusUnauthorized || r.reason() != string(protocol.ReasonUnauthenticated) {
			t.Errorf("GET %s without a session: %d %s", p, r.status, r.body)
		}
	}
	bogus := f.browser()
	bogus.hc.Jar.SetCookies(mustURL(t, f.srv.URL), []*http.Cookie{{Name: CookieName, Value: "forged"}})
	if r := bogus.do("GET", "/console/api/fleet", nil); r.status != http.StatusUnauthorized {
		t.Errorf("forged cookie: %d", r.status)
	}
	if r := f.browser().do("GET", "/console/api/nope", nil); r.status != http.StatusNotFound {
		t.Errorf("unknown endpoint: %d", r.status)
	}
}

func TestStateChangingCallsNeedTheCSRFToken(t *testing.T) {
	f := newFixture(t)
	b, _ := f.enrolled("alice")
	token := b.csrf
	cases := []struct {
		name string
		hdr  []string
	}{
		{"no token", []string{CSRFHeader, ""}},
		{"wrong token", []string{CSRFHeader, token + "x"}},
		{"other origin", []string{"Origin", "http://evil.example"}},
		{"cross-site", []string{"Sec-Fetch-Site", "same-site"}},
		{"form body", []string{"Content-Type", "text/plain"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if r := b.do("POST", "/console/api/logout", map[string]string{}, tc.hdr...); r.status != http.StatusForbidden {
				t.Errorf("logout: %d %s", r.status, r.body)
			}
		})
	}
	if r := b.do("GET", "/console/api/session", nil); r.status != http.StatusOK {
		t.Fatalf("the refused logouts ended the session: %d", r.status)
	}
	if r := b.do("POST", "/console/api/logout", map[string]string{}, "Origin", f.srv.URL); r.status != http.StatusNoContent {
		t.Fatalf("logout with the token: %d %s", r.status, r.body)
	}
	if r := b.do("GET", "/console/api/session", nil); r.status != http.StatusUnauthorized {
		t.Errorf("after logout: %d", r.status)
	}
}

func TestViewerIsRefusedAdminActions(t *testing.T) {
	f := newFixture(t)
	if err := f.st.AddUser(store.User{Name: "ursula", PasswordHash: "x", CreatedMs: 1}); err != nil {
		t.Fatal(err)
	}
	viewer, _ := f.enrolled("victor")
	admin, _ := f.enrolled("alice")
	if r := viewer.do("POST", "/console/api/users/ursula/unlock", map[string]string{}); r.status != http.StatusForbidden || r.reason() != string(protocol.ReasonForbidden) {
		t.Errorf("viewer's unlock: %d %s", r.status, r.body)
	}
	if r := viewer.do("GET", "/console/api/operators", nil); r.status != http.StatusForbidden {
		t.Errorf("viewer's operator list: %d %s", r.status, r.body)
	}
	if r := viewer.do("GET", "/console/api/fleet", nil); r.status != http.StatusOK {
		t.Errorf("viewer's fleet: %d %s", r.status, r.body)
	}
	if r := admin.do("POST", "/console/api/users/ursula/unlock", map[string]string{}); r.status != http.StatusOK {
		t.Errorf("admin's unlock: %d %s", r.status, r.body)
	}
	if r := admin.do("POST", "/console/api/users/nobody/unlock", map[string]string{}); r.status != http.StatusNotFound {
		t.Errorf("unlock of an unknown user: %d %s", r.status, r.body)
	}
	if r := admin.do("POST", "/console/api/users/Bad%20Name/unlock", map[string]string{}); r.status != http.StatusBadRequest {
		t.Errorf("unlock of a malformed name: %d %s", r.status, r.body)
	}
	r := admin.do("GET", "/console/api/operators", nil)
	var ops []OperatorView
	if err := json.Unmarshal(r.body, &ops); err != nil || len(ops) != 2 || !ops[0].Enrolled || strings.Contains(string(r.body), "argon2") {
		t.Errorf("operators: %d %s", r.status, r.body)
	}
	evs, _ := f.log.Query(audit.Filter{User: "ursula"})
	if len(evs) == 0 || evs[0].ClientID != "console:alice" || evs[0].Outcome != "lockout_cleared" {
		t.Errorf("unlock not audited with the operator's name: %+v", evs)
	}
}

func TestSessionsExpireIdleAndAbsolute(t *testing.T) {
	f := newFixture(t)
	b, _ := f.enrolled("alice")
	f.clock.Advance(29 * time.Minute)
	if r := b.do("GET", "/console/api/session", nil); r.status != http.StatusOK {
		t.Fatalf("after 29 idle minutes: %d", r.status)
	}
	f.clock.Advance(31 * time.Minute)
	if r := b.do("GET", "/console/api/session", nil); r.status != http.StatusUnauthorized {
		t.Errorf("after 31 idle minutes: %d", r.status)
	}

	f.clock.Advance(time.Minute)
	b2, _ := f.enrolled("victor")
	for used := time.Duration(0); used < 12*time.Hour-20*time.Minute; used += 20 * time.Minute {
		f.clock.Advance(20 * time.Minute)
		if r := b2.do("GET", "/console/api/session", nil); r.status != http.StatusOK {
			t.Fatalf("in use, after %v: %d", used, r.status)
		}
	}
	f.clock.Advance(20 * time.Minute)
	if r := b2.do("GET", "/console/api/session", nil); r.status != http.StatusUnauthorized {
		t.Errorf("in use, past the absolute expiry: %d", r.status)
	}
}

func TestRemovedOperatorsSessionEnds(t *testing.T) {
	f := newFixture(t)
	b, _ := f.enrolled("victor")
	if err := f.ops.Remove(context.Background(), "victor", nil); err != nil {
		t.Fatal(err)
	}
	f.addOperator("victor", "admin") // the same name again is another operator
	if r := b.do("GET", "/console/api/session", nil); r.status != http.StatusUnauthorized {
		t.Errorf("session of a removed operator: %d %s", r.status, r.body)
	}
}

const vin1, vin2 = "1HGCM82633A004352", "5YJ3E1EA7KF317000"

func TestFleetAndCarPage(t *testing.T) {
	f := newFixture(t)
	if err := f.st.AddVehicles([]store.Vehicle{{VIN: vin1, CreatedMs: 1}, {VIN: vin2, CreatedMs: 2}}); err != nil {
		t.Fatal(err)
	}
	if err := f.st.AddUser(store.User{Name: "ursula", PasswordHash: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := f.st.Assign(vin1, "ursula", protocol.RoleOwner); err != nil {
		t.Fatal(err)
	}
	f.twins.set(store.Twin{VIN: vin1, Status: protocol.StatusOnline, StatusMs: 5, TelemetryMs: 9,
		Signals: map[string]any{protocol.VSSIsLocked: true, protocol.VSSSoC: 81.5, protocol.VSSSpeed: 0.0,
			protocol.VSSLatitude: 48.1, protocol.VSSLongitude: 11.5}})
	b, _ := f.enrolled("victor")
	var fl Fleet
	eventually(t, func() bool {
		r := b.do("GET", "/console/api/fleet", nil)
		_ = json.Unmarshal(r.body, &fl)
		return r.status == http.StatusOK && len(fl.Cars) == 2 && fl.Cars[0].Online
	})
	c := fl.Cars[0]
	if c.VIN != vin1 || c.Locked == nil || !*c.Locked || *c.BatteryPct != 81.5 || c.LastSeenMs != 9 || *c.Lat != 48.1 {
		t.Errorf("car 1: %+v", c)
	}
	if c2 := fl.Cars[1]; c2.Online || c2.Locked != nil || c2.LastSeenMs != 0 {
		t.Errorf("car 2 never reported: %+v", c2)
	}
	r := b.do("GET", "/console/api/cars/"+strings.ToLower(vin1), nil)
	var page CarPage
	if err := json.Unmarshal(r.body, &page); err != nil || r.status != http.StatusOK || page.VIN != vin1 ||
		len(page.Users) != 1 || page.Users[0].Role != "owner" || page.Signals[protocol.VSSSoC] != 81.5 {
		t.Errorf("car page: %d %s", r.status, r.body)
	}
	if r := b.do("GET", "/console/api/cars/NOTAVIN", nil); r.status != http.StatusBadRequest {
		t.Errorf("bad VIN: %d", r.status)
	}
	if r := b.do("GET", "/console/api/cars/1FTFW1ET5DFC10312", nil); r.status != http.StatusNotFound {
		t.Errorf("unknown VIN: %d", r.status)
	}
}

func TestEventsStreamChangesAndResume(t *testing.T) {
	f := newFixture(t)
	if err := f.st.AddVehicles([]store.Vehicle{{VIN: vin1}, {VIN: vin2}}); err != nil {
		t.Fatal(err)
	}
	b, _ := f.enrolled("victor")
	eventually(t, func() bool { // the list of cars is read again every few looks
		cars, _ := f.c.watch.snapshot()
		return len(cars) == 2
	})
	s := b.events("")
	first := s.next(t)
	var fl Fleet
	if err := json.Unmarshal([]byte(first.data), &fl); first.event != "fleet" || err != nil || first.id == "" {
		t.Fatalf("first event: %+v", first)
	}
	if len(fl.Cars) != 2 {
		t.Fatalf("first event holds %d cars, want 2", len(fl.Cars))
	}
	f.twins.set(store.Twin{VIN: vin1, Status: protocol.StatusOnline, Signals: map[string]any{protocol.VSSIsLocked: false}})
	ev := s.next(t)
	var cars []Car
	if err := json.Unmarshal([]byte(ev.data), &cars); ev.event != "cars" || err != nil || len(cars) != 1 || cars[0].VIN != vin1 ||
		cars[0].Locked == nil || *cars[0].Locked {
		t.Fatalf("change event: %+v", ev)
	}
	// Reconnecting from the first event's id gets the change it missed, not the whole fleet.
	again := b.events(first.id).next(t)
	if again.event != "cars" || again.id != ev.id || !strings.Contains(again.data, vin1) {
		t.Errorf("resumed stream: %+v, want the change %s", again, ev.id)
	}
	// An id of another epoch (the gateway restarted) gets the whole fleet.
	if ev := b.events("zzzzzzzzzz-1").next(t); ev.event != "fleet" {
		t.Errorf("stream from another epoch: %+v", ev)
	}
	// A removed car is said to be gone.
	if err := f.st.Update(context.Background(), func(tx kv.Tx) error { return tx.Delete([]byte("vehicles"), []byte(vin2)) }); err != nil {
		t.Fatal(err)
	}
	for {
		ev := s.next(t)
		if strings.Contains(ev.data, `"gone":true`) && strings.Contains(ev.data, vin2) {
			break
		}
	}
}

func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	testutil.EventuallyTrue(t, 10*time.Second, cond)
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestEndedSessionsArePruned(t *testing.T) {
	f := newFixture(t)
	f.enrolled("alice")
	b, _ := f.enrolled("victor")
	count := func() int {
		n := 0
		_ = f.st.View(context.Background(), func(tx kv.Tx) error {
			return tx.Scan(bucketSessions, nil, nil, func(_, _ []byte) error { n++; return nil })
		})
		return n
	}
	if n := count(); n != 2 {
		t.Fatalf("%d sessions stored, want 2", n)
	}
	f.clock.Advance(20 * time.Minute)
	if r := b.do("GET", "/console/api/session", nil); r.status != http.StatusOK {
		t.Fatalf("victor's session: %d", r.status)
	}
	f.clock.Advance(15 * time.Minute) // alice idle 35 min, victor 15
	if n, err := f.c.pruneSessions(context.Background()); err != nil || n != 1 {
		t.Errorf("pruned %d (%v), want alice's one", n, err)
	}
	if n := count(); n != 1 {
		t.Errorf("%d sessions left, want 1", n)
	}
	if r := b.do("GET", "/console/api/session", nil); r.status != http.StatusOK {
		t.Errorf("victor's session after the pruning: %d", r.status)
	}
}

func TestUsersPageShowsLockoutsAndTheirCause(t *testing.T) {
	f := newFixture(t)
	for _, u := range []string{"ursula", "walter"} {
		if err := f.st.AddUser(store.User{Name: u, PasswordHash: "x", CreatedMs: 1}); err != nil {
			t.Fatal(err)
		}
	}
	viewer, _ := f.enrolled("victor")
	for i := 0; i < 20; i++ {
		if err := f.tfa.RecordFailure("ursula", "test", twofa.FactorPassword); protocol.ReasonOf(err) == protocol.ReasonLockedOut {
			break
		}
	}
	r := viewer.do("GET", "/console/api/users", nil)
	var us Users
	if err := json.Unmarshal(r.body, &us); r.status != http.StatusOK || err != nil || len(us.Users) != 2 {
		t.Fatalf("users: %d %s", r.status, r.body)
	}
	u, w := us.Users[0], us.Users[1]
	if u.Name != "ursula" || len(u.Lockouts) != 1 || u.Lockouts[0].Factor != "2fa" || u.Lockouts[0].Cause != "wrong password" ||
		u.Lockouts[0].UntilMs <= f.clock.Now().UnixMilli() || u.Enrolled {
		t.Errorf("ursula: %+v", u)
	}
	if w.Name != "walter" || len(w.Lockouts) != 0 {
		t.Errorf("walter: %+v", w)
	}
	if r := f.browser().do("GET", "/console/api/users", nil); r.status != http.StatusUnauthorized {
		t.Errorf("users without a session: %d", r.status)
	}
}
