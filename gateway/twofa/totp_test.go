package twofa

import (
	"bytes"
	"context"
	"encoding/base32"
	"errors"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp"

	"telematics/gateway/kv"
	"telematics/pkg/protocol"
)

func TestVerifySkew(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		steps int // the code's step relative to the verifier's
		want  protocol.Reason
	}{
		{"two steps behind", -2, protocol.ReasonTOTPInvalid},
		{"one step behind", -1, protocol.ReasonNone},
		{"current step", 0, protocol.ReasonNone},
		{"one step ahead", +1, protocol.ReasonNone},
		{"two steps ahead", +2, protocol.ReasonTOTPInvalid},
	}
	// The verifier's clock at the first and the last second of a step: skew is counted in
	// steps, not seconds.
	for _, within := range []time.Duration{0, 29 * time.Second} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/at+%v", tc.name, within), func(t *testing.T) {
				f := newFixture(t)
				secret, _ := f.enroll(t, "alice")
				start := time.Unix(StepAt(f.clock.Now())*PeriodSeconds, 0).Add(within)
				f.clock.Set(start)
				c := code(t, secret, start.Add(time.Duration(tc.steps)*PeriodSeconds*time.Second))
				step, err := f.s.Verify("alice", "alice-1", c)
				wantReason(t, err, tc.want)
				if err == nil && step != StepAt(start)+int64(tc.steps) {
					t.Errorf("step %d, want %d", step, StepAt(start)+int64(tc.steps))
				}
			})
		}
	}
}

func TestReplay(t *testing.T) {
	t.Parallel()
	t.Run("same code twice", func(t *testing.T) {
		f := newFixture(t)
		secret, _ := f.enroll(t, "alice")
		c := code(t, secret, f.clock.Now())
		if _, err := f.s.Verify("alice", "alice-1", c); err != nil {
			t.Fatal(err)
		}
		_, err := f.s.Verify("alice", "alice-1", c)
		wantReason(t, err, protocol.ReasonTOTPReplayed)
		wantIs(t, err, ErrReplayed)
		// Still a replay in the next step, where the code is one step behind.
		f.clock.Advance(PeriodSeconds * time.Second)
		_, err = f.s.Verify("alice", "alice-2", c)
		wantReason(t, err, protocol.ReasonTOTPReplayed)
	})
	t.Run("earlier step after a later one", func(t *testing.T) {
		f := newFixture(t)
		secret, _ := f.enroll(t, "alice")
		now := f.clock.Now()
		if _, err := f.s.Verify("alice", "alice-1", code(t, secret, now.Add(PeriodSeconds*time.Second))); err != nil {
			t.Fatal(err)
		}
		for _, back := range []time.Duration{0, -PeriodSeconds * time.Second} {
			_, err := f.s.Verify("alice", "alice-1", code(t, secret, now.Add(back)))
			wantReason(t, err, protocol.ReasonTOTPReplayed)
		}
	})
	t.Run("the confirming code", func(t *testing.T) {
		f := newFixture(t)
		e, err := f.s.Enroll("alice", "alice-web", "")
		if err != nil {
			t.Fatal(err)
		}
		c := code(t, e.Secret, f.clock.Now())
		if _, err := f.s.Confirm("alice", "alice-web", c); err != nil {
			t.Fatal(err)
		}
		_, err = f.s.Verify("alice", "alice-1", c)
		wantReason(t, err, protocol.ReasonTOTPReplayed)
		// The next step's code, which an authenticator shows within 30 s, is accepted now.
		if _, err := f.s.Verify("alice", "alice-1", code(t, e.Secret, f.clock.Now().Add(PeriodSeconds*time.Second))); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("replays are not failures", func(t *testing.T) {
		f := newFixture(t)
		secret, _ := f.enroll(t, "alice")
		c := code(t, secret, f.clock.Now())
		for i := 0; i < 10; i++ {
			_, err := f.s.Verify("alice", "alice-1", c)
			if i > 0 {
				wantReason(t, err, protocol.ReasonTOTPReplayed)
			}
		}
		if st, _ := f.s.Status("alice"); st.RecentFailures != 0 || !st.LockedUntil.IsZero() {
			t.Fatalf("status %+v: replays were counted as failures", st)
		}
		if n := f.audit.count(EventReplay); n != 9 {
			t.Errorf("%d replay events, want 9", n)
		}
	})
}

// TestConcurrentSameCode: 50 requests race with one valid code; the step is checked and stored
// in one transaction, so exactly one wins.
func TestConcurrentSameCode(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	secret, _ := f.enroll(t, "alice")
	c := code(t, secret, f.clock.Now())
	const n = 50
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = f.s.Verify("alice", fmt.Sprintf("alice-%d", i), c)
		}()
	}
	close(start)
	wg.Wait()
	accepted, replayed := 0, 0
	for _, err := range errs {
		switch protocol.ReasonOf(err) {
		case protocol.ReasonNone:
			accepted++
		case protocol.ReasonTOTPReplayed:
			replayed++
		default:
			t.Errorf("unexpected %v", err)
		}
	}
	if accepted != 1 || replayed != n-1 {
		t.Fatalf("%d accepted, %d replayed; want 1 and %d", accepted, replayed, n-1)
	}
}

func TestRestartKeepsReplayAndLockout(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	secret, _ := f.enroll(t, "alice")
	bobSecret, _ := f.enroll(t, "bob")
	c := code(t, secret, f.clock.Now())
	if _, err := f.s.Decide("alice", "alice-9", "unlock", c); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		f.s.Verify("bob", "bob-1", wrongCode(t, bobSecret, f.clock.Now()))
	}
	wantReason(t, f.s.CheckLocked("bob"), protocol.ReasonLockedOut)

	if _, err := f.s.Decide("alice", "alice-9", "unlock", ""); err != nil {
		t.Fatalf("not elevated by the accepted code: %v", err)
	}

	f.reopen(t)

	// Elevations are in memory on purpose: they end with the sessions.
	_, err := f.s.Decide("alice", "alice-9", "unlock", "")
	wantReason(t, err, protocol.ReasonTOTPRequired)
	_, err = f.s.Verify("alice", "alice-1", c)
	wantReason(t, err, protocol.ReasonTOTPReplayed)
	wantReason(t, f.s.CheckLocked("bob"), protocol.ReasonLockedOut)
	_, err = f.s.Verify("bob", "bob-1", code(t, bobSecret, f.clock.Now()))
	wantReason(t, err, protocol.ReasonLockedOut)
	// And a fresh code of alice's still works after the restart.
	if _, err := f.s.Verify("alice", "alice-1", code(t, secret, f.clock.Now().Add(PeriodSeconds*time.Second))); err != nil {
		t.Fatal(err)
	}
}

func TestEnrollment(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(p *Policy) { p.Issuer = "Acme Cars" })

	// Nothing to verify against before enrolling, and no failure counted for trying.
	_, err := f.s.Verify("alice", "alice-1", "123456")
	wantReason(t, err, protocol.ReasonTOTPEnrollmentRequired)
	wantIs(t, err, ErrNotEnrolled)
	_, err = f.s.Confirm("alice", "alice-web", "123456")
	wantReason(t, err, protocol.ReasonTOTPEnrollmentRequired)
	wantIs(t, err, ErrNoPendingEnrollment)

	e, err := f.s.Enroll("alice", "alice-web", "")
	if err != nil {
		t.Fatal(err)
	}
	key, err := otp.NewKeyFromURL(e.URL)
	if err != nil {
		t.Fatalf("otpauth url %q: %v", e.URL, err)
	}
	if key.Type() != "totp" || key.Issuer() != "Acme Cars" || key.AccountName() != "alice" ||
		key.Secret() != e.Secret || key.Algorithm() != otp.AlgorithmSHA1 || key.Digits() != otp.DigitsSix || key.Period() != 30 {
		t.Errorf("otpauth url %q does not describe SHA1/6/30 for Acme Cars:alice with the returned secret", e.URL)
	}
	if raw, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(e.Secret); err != nil || len(raw) != SecretBytes {
		t.Errorf("secret %d bytes (%v), want %d", len(raw), err, SecretBytes)
	}
	img, err := png.Decode(bytes.NewReader(e.PNG))
	if err != nil {
		t.Fatalf("qr png: %v", err)
	}
	if b := img.Bounds(); b.Dx() != qrSizePx || b.Dy() != qrSizePx {
		t.Errorf("qr %v, want %dx%d", b, qrSizePx, qrSizePx)
	}

	// Pending is not active.
	if ok, _ := f.s.Enrolled("alice"); ok {
		t.Fatal("enrolled before confirming")
	}
	_, err = f.s.Verify("alice", "alice-1", code(t, e.Secret, f.clock.Now()))
	wantReason(t, err, protocol.ReasonTOTPEnrollmentRequired)

	// A wrong confirmation code does not activate, and counts.
	_, err = f.s.Confirm("alice", "alice-web", wrongCode(t, e.Secret, f.clock.Now()))
	wantReason(t, err, protocol.ReasonTOTPInvalid)
	if st, _ := f.s.Status("alice"); st.Enrolled || !st.Pending || st.RecentFailures != 1 {
		t.Fatalf("after a wrong confirmation: %+v", st)
	}

	// Enrolling again before confirming replaces the pending secret.
	e2, err := f.s.Enroll("alice", "alice-web", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.s.Confirm("alice", "alice-web", code(t, e.Secret, f.clock.Now()))
	wantReason(t, err, protocol.ReasonTOTPInvalid)
	rc, err := f.s.Confirm("alice", "alice-web", code(t, e2.Secret, f.clock.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if len(rc) != RecoveryCodeCount {
		t.Fatalf("%d recovery codes, want %d", len(rc), RecoveryCodeCount)
	}
	if st, _ := f.s.Status("alice"); !st.Enrolled || st.Pending || st.RecoveryCodesLeft != RecoveryCodeCount {
		t.Fatalf("after confirming: %+v", st)
	}
	f.clock.Advance(time.Minute)
	secret := e2.Secret

	t.Run("re-enroll needs proof", func(t *testing.T) {
		_, err := f.s.Enroll("alice", "alice-web", "")
		wantReason(t, err, protocol.ReasonTOTPRequired)
		wantIs(t, err, ErrCodeRequired)
		_, err = f.s.Enroll("alice", "alice-web", wrongCode(t, secret, f.clock.Now()))
		wantReason(t, err, protocol.ReasonTOTPInvalid)
		e3, err := f.s.Enroll("alice", "alice-web", code(t, secret, f.clock.Now()))
		if err != nil {
			t.Fatal(err)
		}
		// The old secret stays in force until the new one is confirmed.
		f.clock.Advance(time.Minute)
		if _, err := f.s.Verify("alice", "alice-1", code(t, secret, f.clock.Now())); err != nil {
			t.Fatalf("old secret during re-enrollment: %v", err)
		}
		f.clock.Advance(time.Minute)
		newRC, err := f.s.Confirm("alice", "alice-web", code(t, e3.Secret, f.clock.Now()))
		if err != nil {
			t.Fatal(err)
		}
		f.clock.Advance(time.Minute)
		_, err = f.s.Verify("alice", "alice-1", code(t, secret, f.clock.Now()))
		wantReason(t, err, protocol.ReasonTOTPInvalid)
		// That made four failures within the window; start afresh.
		f.s.ClearLockout("alice", "admin")
		// Old recovery codes are void, new ones work.
		_, err = f.s.VerifyRecovery("alice", "alice-1", rc[0])
		wantReason(t, err, protocol.ReasonTOTPInvalid)
		if _, err := f.s.VerifyRecovery("alice", "alice-1", newRC[0]); err != nil {
			t.Fatal(err)
		}
		secret = e3.Secret
		f.s.ClearLockout("alice", "admin")
		f.clock.Advance(time.Minute)
	})

	t.Run("disable needs proof", func(t *testing.T) {
		err := f.s.Disable("alice", "alice-web", "")
		wantReason(t, err, protocol.ReasonTOTPRequired)
		err = f.s.Disable("alice", "alice-web", wrongCode(t, secret, f.clock.Now()))
		wantReason(t, err, protocol.ReasonTOTPInvalid)
		if err := f.s.Disable("alice", "alice-web", code(t, secret, f.clock.Now())); err != nil {
			t.Fatal(err)
		}
		if ok, err := f.s.Enrolled("alice"); ok || err != nil {
			t.Fatalf("enrolled %v (%v) after disabling", ok, err)
		}
		err = f.s.Disable("alice", "alice-web", "")
		wantReason(t, err, protocol.ReasonTOTPEnrollmentRequired)
	})

	t.Run("disable cancels a pending enrollment without proof", func(t *testing.T) {
		if _, err := f.s.Enroll("carol", "carol-web", ""); err != nil {
			t.Fatal(err)
		}
		if err := f.s.Disable("carol", "carol-web", ""); err != nil {
			t.Fatal(err)
		}
		if st, _ := f.s.Status("carol"); st.Pending || st.Enrolled {
			t.Fatalf("status %+v", st)
		}
	})

	t.Run("admin reset", func(t *testing.T) {
		f.enroll(t, "dave")
		if err := f.s.Reset("dave", "admin"); err != nil {
			t.Fatal(err)
		}
		if ok, _ := f.s.Enrolled("dave"); ok {
			t.Fatal("enrolled after reset")
		}
		wantReason(t, f.s.Reset("dave", "admin"), protocol.ReasonTOTPEnrollmentRequired)
	})
}

func TestInvalidUser(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, u := range []string{"", "Alice", "bob-x", "admin", "a/b", strings.Repeat("a", 65)} {
		_, err := f.s.Verify(u, "x", "123456")
		wantReason(t, err, protocol.ReasonBadRequest)
		_, err = f.s.Enroll(u, "x", "")
		wantReason(t, err, protocol.ReasonBadRequest)
		wantReason(t, f.s.RecordFailure(u, "x", FactorPassword), protocol.ReasonBadRequest)
	}
}

// TestSecretsSealedAtRest: a copy of the database file alone does not reveal a secret, and a
// sealed secret moved to another user's record does not open.
func TestSecretsSealedAtRest(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	var secrets []string
	for _, u := range []string{"alice", "bob"} {
		s, _ := f.enroll(t, u)
		secrets = append(secrets, s)
	}
	// A pending secret too.
	e, err := f.s.Enroll("carol", "carol-web", "")
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, e.Secret)
	if err := f.db.Sync(); err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(f.path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		raw, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		for _, needle := range [][]byte{[]byte(s), []byte(strings.ToLower(s)), raw} {
			if bytes.Contains(file, needle) {
				t.Errorf("database file contains a secret in the clear (%d bytes)", len(needle))
			}
		}
	}

	// Copy bob's record over alice's: it opens for bob only.
	err = f.kv.Update(t.Context(), func(tx kv.Tx) error {
		v, err := tx.Get(bucketTOTP, []byte("bob"))
		if err != nil {
			return err
		}
		return tx.Put(bucketTOTP, []byte("alice"), bytes.Clone(v))
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.s.Verify("alice", "alice-1", code(t, secrets[1], f.clock.Now()))
	wantReason(t, err, protocol.ReasonInternal)
	if _, err := f.s.Verify("bob", "bob-1", code(t, secrets[1], f.clock.Now())); err != nil {
		t.Fatal(err)
	}
}

// TestOathtool: codes from an independent implementation (Debian's oathtool) are accepted.
func TestOathtool(t *testing.T) {
	t.Parallel()
	oathtool, err := exec.LookPath("oathtool")
	if err != nil {
		t.Skip("oathtool not installed (Debian package oathtool); skipping the independent-implementation check")
	}
	oath := func(t *testing.T, secret string, at *time.Time) string {
		args := []string{"--totp", "-b"}
		if at != nil {
			args = append(args, "--now", at.UTC().Format("2006-01-02 15:04:05 UTC"))
		}
		out, err := exec.Command(oathtool, append(args, secret)...).Output()
		if err != nil {
			t.Fatalf("oathtool: %v", err)
		}
		return strings.TrimSpace(string(out))
	}

	t.Run("explicit time", func(t *testing.T) {
		f := newFixture(t)
		secret, _ := f.enroll(t, "alice")
		// The verifier's clock relative to the time oathtool made the code for: the same
		// instant, one step either way (accepted), two steps either way (refused).
		cases := []struct {
			verifierOffset time.Duration
			want           protocol.Reason
		}{
			{0, protocol.ReasonNone},
			{-PeriodSeconds * time.Second, protocol.ReasonNone},
			{+PeriodSeconds * time.Second, protocol.ReasonNone},
			{-2 * PeriodSeconds * time.Second, protocol.ReasonTOTPInvalid},
			{+2 * PeriodSeconds * time.Second, protocol.ReasonTOTPInvalid},
		}
		for i, tc := range cases {
			at := f.clock.Now().Add(time.Duration(i+1) * time.Hour)
			f.clock.Set(at.Add(tc.verifierOffset))
			_, err := f.s.Verify("alice", "alice-1", oath(t, secret, &at))
			if protocol.ReasonOf(err) != tc.want {
				t.Fatalf("oathtool's code for %v verified at %+v: %v, want %q", at, tc.verifierOffset, err, tc.want)
			}
			f.s.ClearLockout("alice", "test")
		}
	})

	t.Run("real clock", func(t *testing.T) {
		// oathtool reads the real clock, so the service does too. The code may be made in one
		// step and checked in the next; the ±1 step of skew covers that, unless this test
		// stalls for more than 30 s.
		p := DefaultPolicy()
		db := openDB(t, t.TempDir()+"/real.db")
		s, err := New(boltKV(t, db), testKey, p, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		e, err := s.Enroll("alice", "alice-web", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Confirm("alice", "alice-web", oath(t, e.Secret, nil)); err != nil {
			t.Fatalf("confirm with oathtool's code: %v", err)
		}
		// The confirming step is used; the next step's code (oathtool --now +30s) is accepted.
		next := time.Now().Add(PeriodSeconds * time.Second)
		if _, err := s.Verify("alice", "alice-1", oath(t, e.Secret, &next)); err != nil {
			t.Fatalf("verify oathtool's next code: %v", err)
		}
	})
}

// TestRFC6238Vectors checks the matcher against RFC 6238 appendix B (SHA1; the last six of its
// eight digits, which is what six-digit truncation yields).
func TestRFC6238Vectors(t *testing.T) {
	t.Parallel()
	secret := []byte("12345678901234567890")
	cases := []struct {
		unix int64
		code string
	}{
		{59, "287082"},
		{1111111109, "081804"},
		{1111111111, "050471"},
		{1234567890, "005924"},
		{2000000000, "279037"},
		{20000000000, "353130"},
	}
	for _, tc := range cases {
		step, ok, err := matchStep(secret, tc.code, time.Unix(tc.unix, 0))
		if err != nil || !ok || step != tc.unix/PeriodSeconds {
			t.Errorf("T=%d code %s: step %d, ok %v, err %v; want step %d", tc.unix, tc.code, step, ok, err, tc.unix/PeriodSeconds)
		}
	}
}

// TestBatchRerun: when Update runs Verify's function again (another writer of its bbolt group
// commit failed, or an etcd transaction conflicted), after a first run whose writes were
// rolled back, the re-run must decide afresh (accept, not "replayed" against its own
// rolled-back write) and report its events once. rerunStore forces the re-run: it rolls back
// the first run of each Update that saw the code accepted.
func TestBatchRerun(t *testing.T) {
	f := newFixture(t)
	secret, _ := f.enroll(t, "alice")
	rs := &rerunStore{Store: f.kv}
	s, err := New(rs, testKey, f.s.Policy(), f.clock, f.audit)
	if err != nil {
		t.Fatal(err)
	}
	forced := 0
	for round := 0; round < 100 && forced < 3; round++ {
		f.clock.Advance(PeriodSeconds * time.Second)
		c, want := code(t, secret, f.clock.Now()), StepAt(f.clock.Now())
		successes := f.audit.count(EventSuccess)
		rs.check = func(tx kv.Tx) bool {
			rec, err := getTOTP(tx, "alice")
			return err == nil && rec != nil && rec.LastStep == want
		}
		if _, err := s.Verify("alice", "alice-1", c); err != nil {
			t.Fatalf("round %d (forced re-runs so far %d): %v", round, forced, err)
		}
		forced += rs.forced
		rs.forced = 0
		if got := f.audit.count(EventSuccess) - successes; got != 1 {
			t.Fatalf("round %d: %d success events, want 1", round, got)
		}
	}
	if forced == 0 {
		t.Fatal("no forced re-run: the re-run path was not exercised")
	}
	t.Logf("%d forced re-runs", forced)
}

// rerunStore rolls back the first run of an Update whose function left check true, and runs
// the function again in a new transaction: the re-run a conflict or a failed group commit
// causes.
type rerunStore struct {
	kv.Store
	check  func(kv.Tx) bool
	forced int
}

var errForcedRollback = errors.New("forced rollback")

func (r *rerunStore) Update(ctx context.Context, fn func(kv.Tx) error) error {
	err := r.Store.Update(ctx, func(tx kv.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		if r.check != nil && r.check(tx) {
			return errForcedRollback
		}
		return nil
	})
	if !errors.Is(err, errForcedRollback) {
		return err
	}
	r.forced++
	return r.Store.Update(ctx, fn)
}
