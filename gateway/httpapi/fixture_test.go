package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/keys"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
)

// The API of these tests is built as gateway/server builds it, from the real parts: a bbolt
// store in the test's TempDir, the audit log in it, the 2FA service, the key registry on a
// mochi broker's inline client (no port), a real signing key, issuer and verifier. Only the
// live twin, which the command router keeps from MQTT telemetry, is a map the test fills.

const (
	adminToken = "admin-token-for-tests"
	brokerURL  = "tcp://127.0.0.1:1883"
	password   = "correct horse battery" // 21 bytes: long enough
	vinA       = "1HGCM82633A004352"
	vinB       = "2HGCM82633A004353"
	appTTL     = time.Hour
)

// cheap password hashing: the tests check the logic, not argon2id's cost.
var cheap = accounts.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}

// twins is the live twin: what the router would have from the cars' telemetry.
type twins struct {
	mu sync.Mutex
	m  map[string]store.Twin
}

func (tw *twins) Twin(vin string) (store.Twin, bool) {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	t, ok := tw.m[vin]
	return t, ok
}

func (tw *twins) set(t store.Twin) {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	tw.m[t.VIN] = t
}

// ring is the gateway's signing keys without a rotation.
type ring struct{ cur *sign.Signer }

func (r ring) Current() *sign.Signer  { return r.cur }
func (r ring) Previous() *sign.Signer { return nil }

// fixture is an API served by an httptest server on loopback, and an admin client of it.
type fixture struct {
	t      *testing.T
	api    *API
	srv    *httptest.Server
	admin  *api.Client
	clock  *clocktest.Fake // for the API, the 2FA service, the key registry and the tokens
	twins  *twins
	signer *sign.Signer

	mu       sync.Mutex
	ended    []string          // users whose tokens ended (Hooks.TokensEnded)
	retired  map[string]string // VIN → the new token id (Hooks.TokenRetired)
	notReady error             // what Hooks.Ready answers
}

// newFixture starts an API with 2FA off; configure (may be nil) changes it before it serves.
func newFixture(t *testing.T, configure func(*API, *twofa.Policy)) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: clocktest.New(time.UnixMilli(1_800_000_000_000)), twins: &twins{m: map[string]store.Twin{}},
		retired: map[string]string{}}
	now := f.clock
	log := slog.New(slog.DiscardHandler)

	st, err := store.Open(filepath.Join(t.TempDir(), "gateway.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	al, err := audit.Open(st.KV())
	if err != nil {
		t.Fatal(err)
	}
	if f.signer, err = sign.Generate(); err != nil {
		t.Fatal(err)
	}
	broker := mqtt.New(&mqtt.Options{InlineClient: true, Logger: log})
	bus := mqttc.NewInline(broker, mqttc.InlineOptions{Workers: 1, Logger: log})
	t.Cleanup(func() { bus.Close(); broker.Close() })

	a := &API{
		Store: st, Audit: al, Issuer: token.NewIssuer(f.signer, now), GatewayKey: f.signer,
		Verifier: token.NewVerifier(now, f.signer.Public()), Twins: f.twins,
		AdminToken: adminToken, Clock: now, Log: log, BrokerURL: brokerURL,
		AppTokenTTL: appTTL, VehicleTokenTTL: 24 * time.Hour, PasswordParams: cheap,
		Lockout: accounts.NewLockout(5, 5*time.Minute, 15*time.Minute, now),
	}
	policy := twofa.DefaultPolicy()
	policy.Mode = twofa.ModeOff
	if configure != nil {
		configure(a, &policy)
	}
	key := bytes.Repeat([]byte{7}, twofa.KeySize)
	svc, err := twofa.New(st.KV(), key, policy, now, twofa.AuditLog{Log: al})
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keys.New(st, al, ring{f.signer}, bus, svc, now, log)
	if err != nil {
		t.Fatal(err)
	}
	a.TwoFA, a.Keys, a.Guard = svc, ks, TwoFactorGuard{Svc: svc}
	a.Hooks = Hooks{
		CarKey: ks.GrantSigner,
		Ready: func() error {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.notReady
		},
		Stats: func() api.Stats {
			return api.Stats{CarsReporting: 1, PendingCommands: 2, TelemetryLost: 3, TelemetryReceived: 4}
		},
		TokensEnded: func(user string) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.ended = append(f.ended, user)
		},
		TokenRetired: func(vin, jti string) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.retired[vin] = jti
		},
	}
	f.api = a
	f.srv = httptest.NewServer(a.Handler())
	t.Cleanup(f.srv.Close)
	f.admin = api.NewClient(f.srv.URL, adminToken)
	return f
}

func (f *fixture) tokensEnded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ended...)
}

// app is a client without a token (for login).
func (f *fixture) app() *api.Client { return api.NewClient(f.srv.URL, "") }

// addUser creates a user through the admin API.
func (f *fixture) addUser(name string) {
	f.t.Helper()
	if err := f.admin.AddUser(context.Background(), name, password); err != nil {
		f.t.Fatalf("add user %s: %v", name, err)
	}
}

// addVehicles provisions vins through the admin API.
func (f *fixture) addVehicles(vins ...string) []protocol.Credentials {
	f.t.Helper()
	creds, err := f.admin.AddVehicles(context.Background(), api.AddVehiclesRequest{VINs: vins})
	if err != nil {
		f.t.Fatalf("add vehicles %v: %v", vins, err)
	}
	return creds
}

// login logs user in and returns a client with their app token.
func (f *fixture) login(user string) *api.Client {
	f.t.Helper()
	out, err := f.app().Login(context.Background(), user, password, "")
	if err != nil {
		f.t.Fatalf("login %s: %v", user, err)
	}
	return f.app().WithToken(out.Token)
}

// pair pairs a new phone key of the logged-in c with vin and returns its whitelist entry.
func (f *fixture) pair(c *api.Client, vin string) protocol.WhitelistKey {
	f.t.Helper()
	k, err := sign.Generate()
	if err != nil {
		f.t.Fatal(err)
	}
	pub, err := sign.EncodePublic(k.Public())
	if err != nil {
		f.t.Fatal(err)
	}
	wk, err := c.PairKey(context.Background(), api.PairRequest{VIN: vin, PublicKey: pub, Label: "phone"})
	if err != nil {
		f.t.Fatalf("pair a key with %s: %v", vin, err)
	}
	return wk
}

// audit returns the records that match q, newest first.
func (f *fixture) audit(q audit.Filter) []audit.Event {
	f.t.Helper()
	evs, err := f.api.Audit.Query(q)
	if err != nil {
		f.t.Fatal(err)
	}
	return evs
}

// raw is one HTTP request with a raw body and headers; the answer's status, headers and body.
type raw struct {
	status int
	header http.Header
	body   []byte
}

func (f *fixture) do(method, path, auth string, body io.Reader) raw {
	f.t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, body)
	if err != nil {
		f.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return raw{status: resp.StatusCode, header: resp.Header, body: b}
}

// wantError checks that err is an *api.Error with status and reason, and returns it.
func wantError(t *testing.T, err error, status int, reason protocol.Reason) *api.Error {
	t.Helper()
	ae, ok := err.(*api.Error)
	if !ok {
		t.Fatalf("got %v (%T), want a %d %s answer", err, err, status, reason)
	}
	if ae.Status != status || ae.Reason != reason || ae.Message == "" {
		t.Fatalf("got %d %q %q, want %d %s with a message", ae.Status, ae.Reason, ae.Message, status, reason)
	}
	return ae
}

// errorBody decodes an error answer strictly: exactly {"error", "message"}, JSON content type.
func errorBody(t *testing.T, r raw) api.ErrorBody {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error answer %d has Content-Type %q: %s", r.status, ct, r.body)
	}
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	var e api.ErrorBody
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("error answer %d is not {error, message}: %v: %s", r.status, err, r.body)
	}
	return e
}
