package twofa

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"
	bolt "go.etcd.io/bbolt"

	"telematics/gateway/kv"
	"telematics/gateway/kv/boltkv"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
)

// t0 is the tests' epoch: 10 s into a time step, so that ±seconds never cross a step by
// accident.
var t0 = time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)

// recorder is an Auditor that keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) Audit(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) kinds() []EventKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ks []EventKind
	for _, e := range r.events {
		ks = append(ks, e.Kind)
	}
	return ks
}

func (r *recorder) count(kind EventKind) int {
	n := 0
	for _, k := range r.kinds() {
		if k == kind {
			n++
		}
	}
	return n
}

var testKey = []byte("0123456789abcdef0123456789abcdef")

func openDB(t testing.TB, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// boltKV serves db as the service's kv.Store, closed (before db) at the test's end.
func boltKV(t testing.TB, db *bolt.DB) kv.Store {
	s := boltkv.New(db)
	t.Cleanup(func() { s.Close() })
	return s
}

type fixture struct {
	s     *Service
	clock *clocktest.Fake
	audit *recorder
	db    *bolt.DB
	kv    kv.Store // on db
	path  string
}

func newFixture(t testing.TB, mutate ...func(*Policy)) *fixture {
	t.Helper()
	p := DefaultPolicy()
	for _, m := range mutate {
		m(&p)
	}
	f := &fixture{clock: clocktest.New(t0), audit: &recorder{}, path: filepath.Join(t.TempDir(), "gateway.db")}
	f.db = openDB(t, f.path)
	f.kv = boltKV(t, f.db)
	s, err := New(f.kv, testKey, p, f.clock, f.audit)
	if err != nil {
		t.Fatal(err)
	}
	f.s = s
	return f
}

// reopen closes the database and starts a new service on the same file, as a gateway restart.
func (f *fixture) reopen(t testing.TB) {
	t.Helper()
	f.kv.Close()
	if err := f.db.Close(); err != nil {
		t.Fatal(err)
	}
	f.db = openDB(t, f.path)
	f.kv = boltKV(t, f.db)
	s, err := New(f.kv, testKey, f.s.Policy(), f.clock, f.audit)
	if err != nil {
		t.Fatal(err)
	}
	f.s = s
}

// enroll enrolls and confirms user at the current clock and moves the clock one minute on,
// past the step the confirmation used. It returns the base32 secret and the recovery codes.
func (f *fixture) enroll(t testing.TB, user string) (secret string, recovery []string) {
	t.Helper()
	e, err := f.s.Enroll(user, user+"-web", "")
	if err != nil {
		t.Fatalf("Enroll(%s): %v", user, err)
	}
	recovery, err = f.s.Confirm(user, user+"-web", code(t, e.Secret, f.clock.Now()))
	if err != nil {
		t.Fatalf("Confirm(%s): %v", user, err)
	}
	f.clock.Advance(time.Minute)
	return e.Secret, recovery
}

// code is the TOTP code of secret at time at, from pquerna's generator.
func code(t testing.TB, secret string, at time.Time) string {
	t.Helper()
	c, err := totp.GenerateCodeCustom(secret, at, codeOpts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// wrongCode returns a six-digit code that is not the code of any step within ±2 of at.
func wrongCode(t testing.TB, secret string, at time.Time) string {
	t.Helper()
	bad := map[string]bool{}
	for d := -2; d <= 2; d++ {
		bad[code(t, secret, at.Add(time.Duration(d)*PeriodSeconds*time.Second))] = true
	}
	for _, c := range []string{"000000", "111111", "222222", "333333", "444444", "555555"} {
		if !bad[c] {
			return c
		}
	}
	t.Fatal("no wrong code found")
	return ""
}

// wantReason fails unless err carries reason (ReasonNone: err is nil).
func wantReason(t testing.TB, err error, want protocol.Reason) {
	t.Helper()
	if got := protocol.ReasonOf(err); got != want {
		t.Fatalf("reason %q (err %v), want %q", got, err, want)
	}
}

func wantIs(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("err %v, want errors.Is %v", err, target)
	}
}
