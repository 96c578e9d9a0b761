package console

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/operators"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/pkg/clock/clocktest"
)

// cheap argon2id parameters: the tests check logic, not hashing cost.
var cheap = accounts.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}

const password = "correct horse battery"

// memTwins is the twin as the router would hold it, set by the test.
type memTwins struct {
	mu sync.Mutex
	m  map[string]store.Twin
}

func (t *memTwins) Twin(vin string) (store.Twin, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tw, ok := t.m[vin]
	return tw, ok
}

func (t *memTwins) set(tw store.Twin) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m[tw.VIN] = tw
}

type fixture struct {
	t     *testing.T
	clock *clocktest.Fake
	st    *store.Store
	log   *audit.Log
	tfa   *twofa.Service
	ops   *operators.Store
	twins *memTwins
	c     *Console
	srv   *httptest.Server
}

func newFixture(t *testing.T) *fixture { t.Helper(); return newFixtureWith(t, nil) }

// newFixtureWith is newFixture with deps changed by with (when not nil) before New.
func newFixtureWith(t *testing.T, with func(*Deps)) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: clocktest.New(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)), twins: &memTwins{m: map[string]store.Twin{}}}
	var err error
	if f.st, err = store.Open(filepath.Join(t.TempDir(), "gateway.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.st.Close() })
	if f.log, err = audit.Open(f.st.KV()); err != nil {
		t.Fatal(err)
	}
	if f.tfa, err = twofa.New(f.st.KV(), bytes.Repeat([]byte{7}, 32), twofa.DefaultPolicy(), f.clock, twofa.AuditLog{Log: f.log}); err != nil {
		t.Fatal(err)
	}
	f.ops = operators.New(f.st.KV())
	for name, role := range map[string]operators.Role{"alice": operators.RoleAdmin, "victor": operators.RoleViewer} {
		f.addOperator(name, role)
	}
	cfg := DefaultConfig()
	cfg.WatchInterval = 10 * time.Millisecond
	deps := Deps{Store: f.st, Operators: f.ops, TwoFA: f.tfa, Audit: f.log, Twins: f.twins, PasswordParams: cheap, Clock: f.clock}
	if with != nil {
		with(&deps)
	}
	f.c, err = New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(f.c.Handler())
	t.Cleanup(func() { f.c.Close(); f.srv.Close() })
	return f
}

func (f *fixture) addOperator(name string, role operators.Role) {
	h, err := accounts.Hash(password, cheap)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := f.ops.Add(context.Background(), operators.Operator{Name: name, Role: role, PasswordHash: h, CreatedMs: f.clock.Now().UnixMilli()}, nil); err != nil {
		f.t.Fatal(err)
	}
}

// browser is one operator's cookie jar and CSRF token.
type browser struct {
	f    *fixture
	hc   *http.Client
	csrf string
}

func (f *fixture) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{f: f, hc: &http.Client{Jar: jar}}
}

type reply struct {
	status int
	body   []byte
	header http.Header
}

func (r reply) reason() string {
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(r.body, &e)
	return e.Error
}

// do sends a request; a non-nil body is JSON, and unsafe methods carry the CSRF token.
func (b *browser) do(method, path string, body any, hdr ...string) reply {
	b.f.t.Helper()
	var rd io.Reader
	if body != nil {
		j, _ := json.Marshal(body)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, b.f.srv.URL+path, rd)
	if err != nil {
		b.f.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if unsafeMethod(method) && b.csrf != "" {
		req.Header.Set(CSRFHeader, b.csrf)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	res, err := b.hc.Do(req)
	if err != nil {
		b.f.t.Fatal(err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	return reply{status: res.StatusCode, body: out, header: res.Header}
}

func (b *browser) login(name, code string) (reply, Session) {
	b.f.t.Helper()
	r := b.do("POST", "/console/api/login", LoginRequest{Operator: name, Password: password, Code: code})
	var s Session
	if r.status == http.StatusOK {
		if err := json.Unmarshal(r.body, &s); err != nil {
			b.f.t.Fatal(err)
		}
		b.csrf = s.CSRF
	}
	return r, s
}

// code is the TOTP code of secret at the fixture's time.
func (f *fixture) code(secret string) string {
	f.t.Helper()
	c, err := totp.GenerateCodeCustom(secret, f.clock.Now(), totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// enrolled logs name in for the first time, enrolls and confirms; it returns the browser with
// a full session and the TOTP secret.
func (f *fixture) enrolled(name string) (*browser, string) {
	f.t.Helper()
	b := f.browser()
	r, s := b.login(name, "")
	if r.status != http.StatusOK || s.Enroll == nil {
		f.t.Fatalf("first login of %s: %d %s", name, r.status, r.body)
	}
	r = b.do("POST", "/console/api/enroll", CodeRequest{Code: f.code(s.Enroll.Secret)})
	if r.status != http.StatusOK {
		f.t.Fatalf("confirm enrollment of %s: %d %s", name, r.status, r.body)
	}
	var full Session
	_ = json.Unmarshal(r.body, &full)
	b.csrf = full.CSRF
	f.clock.Advance(30 * time.Second) // the confirming code's step is spent
	return b, s.Enroll.Secret
}

// sse reads one event stream.
type sse struct {
	res *http.Response
	rd  *bufio.Reader
}

type sseEvent struct{ id, event, data string }

func (b *browser) events(lastID string) *sse {
	b.f.t.Helper()
	req, _ := http.NewRequest("GET", b.f.srv.URL+"/console/api/events", nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.f.t.Cleanup(cancel)
	res, err := b.hc.Do(req.WithContext(ctx))
	if err != nil {
		b.f.t.Fatal(err)
	}
	b.f.t.Cleanup(func() { res.Body.Close() })
	if res.StatusCode != http.StatusOK {
		b.f.t.Fatalf("events: %d", res.StatusCode)
	}
	return &sse{res: res, rd: bufio.NewReader(res.Body)}
}

// next reads the next event (comments skipped); the stream's end fails the test.
func (s *sse) next(t *testing.T) sseEvent {
	t.Helper()
	var ev sseEvent
	for {
		line, err := s.rd.ReadString('\n')
		if err != nil {
			t.Fatalf("event stream: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if ev.event != "" {
				return ev
			}
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[6:]
		}
	}
}
