package twofa

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"telematics/pkg/protocol"
)

func TestRolloutModes(t *testing.T) {
	t.Parallel()
	const guarded, unguarded = "unlock", "lock"
	cases := []struct {
		mode     Mode
		enrolled bool
		action   string
		want     protocol.Reason
	}{
		{ModeOff, false, guarded, protocol.ReasonNone},
		{ModeOff, true, guarded, protocol.ReasonNone},
		{ModeEnrolled, false, guarded, protocol.ReasonNone},
		{ModeEnrolled, true, guarded, protocol.ReasonTOTPRequired},
		{ModeEnrolled, true, unguarded, protocol.ReasonNone},
		{ModeRequired, false, guarded, protocol.ReasonTOTPEnrollmentRequired},
		{ModeRequired, false, unguarded, protocol.ReasonNone},
		{ModeRequired, true, guarded, protocol.ReasonTOTPRequired},
		{ModeRequired, true, ActionKeyRevoke, protocol.ReasonTOTPRequired},
		{ModeRequired, true, ActionLogin, protocol.ReasonNone}, // LoginRequiresTOTP is off
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/enrolled=%v/%s", tc.mode, tc.enrolled, tc.action), func(t *testing.T) {
			f := newFixture(t, func(p *Policy) { p.Mode = tc.mode })
			var secret string
			if tc.enrolled {
				secret, _ = f.enroll(t, "alice")
			}
			d, err := f.s.Decide("alice", "alice-1", tc.action, "")
			wantReason(t, err, tc.want)
			if err == nil && len(d.Factors) != 0 {
				t.Errorf("factors %v without a code", d.Factors)
			}
			if !tc.enrolled {
				return
			}
			// A right code always passes and is named; a wrong one always fails, in every mode.
			d, err = f.s.Decide("alice", "alice-2", tc.action, code(t, secret, f.clock.Now()))
			if err != nil || !slices.Equal(d.Factors, []string{FactorTOTP}) || d.Step != StepAt(f.clock.Now()) {
				t.Fatalf("with a right code: %+v, %v", d, err)
			}
			_, err = f.s.Decide("alice", "alice-3", tc.action, wrongCode(t, secret, f.clock.Now()))
			wantReason(t, err, protocol.ReasonTOTPInvalid)
		})
	}
}

func TestLoginRequiresTOTP(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(p *Policy) { p.LoginRequiresTOTP = true })
	secret, _ := f.enroll(t, "alice")
	_, err := f.s.Decide("alice", "", ActionLogin, "")
	wantReason(t, err, protocol.ReasonTOTPRequired)
	if _, err := f.s.Decide("alice", "", ActionLogin, code(t, secret, f.clock.Now())); err != nil {
		t.Fatal(err)
	}
	// Without a session id nothing is elevated.
	_, err = f.s.Decide("alice", "", ActionLogin, "")
	wantReason(t, err, protocol.ReasonTOTPRequired)
}

func TestStepUp(t *testing.T) {
	t.Parallel()
	const ttl = 5 * time.Minute
	f := newFixture(t, func(p *Policy) { p.StepUpTTL = ttl })
	secret, _ := f.enroll(t, "alice")
	start := f.clock.Now()
	if _, err := f.s.Decide("alice", "alice-1", "unlock", code(t, secret, start)); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name     string
		at       time.Duration // after the accepted code
		clientID string
		code     func() string
		want     protocol.Reason
		factors  []string
	}{
		{"same session, no code", time.Second, "alice-1", nil, protocol.ReasonNone, []string{FactorStepUp}},
		{"same session, just before the TTL", ttl - time.Millisecond, "alice-1", nil, protocol.ReasonNone, []string{FactorStepUp}},
		{"other session", time.Second, "alice-2", nil, protocol.ReasonTOTPRequired, nil},
		{"wrong code within step-up", time.Second, "alice-1",
			func() string { return wrongCode(t, secret, f.clock.Now()) }, protocol.ReasonTOTPInvalid, nil},
		{"replayed code within step-up", time.Second, "alice-1",
			func() string { return code(t, secret, start) }, protocol.ReasonTOTPReplayed, nil},
		{"still elevated after the failures", 2 * time.Second, "alice-1", nil, protocol.ReasonNone, []string{FactorStepUp}},
		{"exactly at the TTL", ttl, "alice-1", nil, protocol.ReasonTOTPRequired, nil},
	}
	for _, tc := range cases {
		f.clock.Set(start.Add(tc.at))
		c := ""
		if tc.code != nil {
			c = tc.code()
		}
		d, err := f.s.Decide("alice", tc.clientID, "unlock", c)
		if got := protocol.ReasonOf(err); got != tc.want {
			t.Fatalf("%s: %q (%v), want %q", tc.name, got, err, tc.want)
		}
		if !slices.Equal(d.Factors, tc.factors) {
			t.Errorf("%s: factors %v, want %v", tc.name, d.Factors, tc.factors)
		}
	}

	t.Run("lockout overrides step-up, not unguarded actions", func(t *testing.T) {
		f.clock.Set(start.Add(time.Hour))
		if _, err := f.s.Decide("alice", "alice-1", "unlock", code(t, secret, f.clock.Now())); err != nil {
			t.Fatal(err)
		}
		for range 5 {
			f.s.RecordFailure("alice", "alice-login", FactorPassword)
		}
		_, err := f.s.Decide("alice", "alice-1", "unlock", "")
		wantReason(t, err, protocol.ReasonLockedOut)
		if _, err := f.s.Decide("alice", "alice-1", "lock", ""); err != nil {
			t.Fatalf("lock during a lockout: %v", err)
		}
		f.s.ClearLockout("alice", "admin")
	})

	t.Run("session end and secret changes drop elevation", func(t *testing.T) {
		f.clock.Set(start.Add(2 * time.Hour))
		if _, err := f.s.Decide("alice", "alice-1", "unlock", code(t, secret, f.clock.Now())); err != nil {
			t.Fatal(err)
		}
		f.s.EndSession("alice", "alice-1")
		_, err := f.s.Decide("alice", "alice-1", "unlock", "")
		wantReason(t, err, protocol.ReasonTOTPRequired)

		f.clock.Advance(time.Minute)
		if _, err := f.s.Decide("alice", "alice-1", "unlock", code(t, secret, f.clock.Now())); err != nil {
			t.Fatal(err)
		}
		f.clock.Advance(time.Minute)
		if err := f.s.Disable("alice", "alice-web", code(t, secret, f.clock.Now())); err != nil {
			t.Fatal(err)
		}
		// Mode enrolled: alice is no longer asked, and not elevated either.
		d, err := f.s.Decide("alice", "alice-1", "unlock", "")
		if err != nil || len(d.Factors) != 0 {
			t.Fatalf("after disable: %+v, %v", d, err)
		}
	})
}

func TestStepUpDisabled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(p *Policy) { p.StepUpTTL = 0 })
	secret, _ := f.enroll(t, "alice")
	if _, err := f.s.Decide("alice", "alice-1", "unlock", code(t, secret, f.clock.Now())); err != nil {
		t.Fatal(err)
	}
	_, err := f.s.Decide("alice", "alice-1", "unlock", "")
	wantReason(t, err, protocol.ReasonTOTPRequired)
}

func TestStepUpSweep(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(p *Policy) { p.StepUpTTL = time.Minute })
	for i := range 100 {
		f.s.elevate("alice", fmt.Sprintf("alice-%d", i), f.clock.Now())
	}
	f.clock.Advance(time.Minute)
	f.s.elevate("bob", "bob-1", f.clock.Now())
	f.s.mu.Lock()
	n := len(f.s.stepUp)
	f.s.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d elevations kept after they expired, want 1", n)
	}
}

func TestRecoveryCodes(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, rc := f.enroll(t, "alice")
	_, bobRC := f.enroll(t, "bob")

	seen := map[string]bool{}
	for _, c := range rc {
		if len(c) != 19 || strings.Count(c, "-") != 3 || seen[c] {
			t.Fatalf("recovery code %q: malformed or repeated", c)
		}
		seen[c] = true
	}

	left, err := f.s.VerifyRecovery("alice", "alice-1", rc[0])
	if err != nil || left != RecoveryCodeCount-1 {
		t.Fatalf("left %d, %v", left, err)
	}
	// Single use.
	_, err = f.s.VerifyRecovery("alice", "alice-1", rc[0])
	wantReason(t, err, protocol.ReasonTOTPInvalid)
	wantIs(t, err, ErrInvalidCode)
	// As typed by a user: upper case, spaces instead of dashes.
	if _, err := f.s.VerifyRecovery("alice", "alice-1", strings.ToUpper(strings.ReplaceAll(rc[1], "-", " "))); err != nil {
		t.Fatal(err)
	}
	// Another user's code is wrong here.
	_, err = f.s.VerifyRecovery("alice", "alice-1", bobRC[0])
	wantReason(t, err, protocol.ReasonTOTPInvalid)
	// In a command, anything not six digits is taken for a recovery code.
	d, err := f.s.Decide("alice", "alice-7", "unlock", rc[2])
	if err != nil || !slices.Equal(d.Factors, []string{FactorRecovery}) {
		t.Fatalf("decide with a recovery code: %+v, %v", d, err)
	}
	if _, err := f.s.Decide("alice", "alice-7", "unlock", ""); err != nil {
		t.Fatalf("recovery code did not elevate the session: %v", err)
	}
	// Wrong recovery codes count: two above, three more lock.
	for i := range 3 {
		_, err = f.s.VerifyRecovery("alice", "alice-1", rc[0])
		if i < 2 {
			wantReason(t, err, protocol.ReasonTOTPInvalid)
		}
	}
	wantReason(t, err, protocol.ReasonLockedOut)
	_, err = f.s.VerifyRecovery("alice", "alice-1", rc[3])
	wantReason(t, err, protocol.ReasonLockedOut)

	st, _ := f.s.Status("alice")
	if st.RecoveryCodesLeft != RecoveryCodeCount-3 {
		t.Errorf("%d recovery codes left, want %d", st.RecoveryCodesLeft, RecoveryCodeCount-3)
	}
	if got := f.audit.count(EventRecoveryUsed); got != 3 {
		t.Errorf("%d recovery_used events, want 3", got)
	}
}

func TestNormalizeRecoveryCode(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in, want string
		ok       bool
	}{
		{"abcd-efgh-ijkl-mn23", "abcdefghijklmn23", true},
		{"ABCD EFGH IJKL MN23", "abcdefghijklmn23", true},
		{"abcdefghijklmn23", "abcdefghijklmn23", true},
		{"abcd-efgh-ijkl-mn2", "", false},     // short
		{"abcd-efgh-ijkl-mn234", "", false},   // long
		{"abcd-efgh-ijkl-mn01", "", false},    // 0 and 1 are not base32
		{"abcd-efgh-ijkl-mn2é", "", false},    // not ASCII
		{"123456", "", false},                 // a TOTP code
		{strings.Repeat("-", 100), "", false}, // absurd
	}
	for _, tc := range cases {
		got, ok := normalizeRecoveryCode(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("normalizeRecoveryCode(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// TestAuditNeverHoldsSecrets runs every operation and checks that no event mentions a code, a
// recovery code or a secret, and that each kind of event was reported.
func TestAuditNeverHoldsSecrets(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	e, err := f.s.Enroll("alice", "alice-web", "")
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{e.Secret}
	confirmCode := code(t, e.Secret, f.clock.Now())
	rc, err := f.s.Confirm("alice", "alice-web", confirmCode)
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, confirmCode)
	secrets = append(secrets, rc...)
	f.clock.Advance(time.Minute)
	c := code(t, e.Secret, f.clock.Now())
	secrets = append(secrets, c)
	f.s.Decide("alice", "alice-1", "unlock", c[:3]+" "+c[3:]) // as an app shows it
	if ev := f.audit.events[len(f.audit.events)-1]; ev.Kind != EventSuccess || ev.Action != "unlock" || ev.ClientID != "alice-1" || ev.Step != StepAt(f.clock.Now()) {
		t.Errorf("event %+v, want a success for unlock in alice-1", ev)
	}
	f.s.Verify("alice", "alice-1", c) // replay
	f.s.VerifyRecovery("alice", "alice-1", rc[0])
	for range 5 {
		w := wrongCode(t, e.Secret, f.clock.Now())
		secrets = append(secrets, w)
		f.s.Verify("alice", "alice-1", w)
	}
	f.s.Verify("alice", "alice-1", c) // locked
	f.s.ClearLockout("alice", "admin")
	f.clock.Advance(time.Minute)
	c2 := code(t, e.Secret, f.clock.Now())
	secrets = append(secrets, c2)
	f.s.Disable("alice", "alice-web", c2)
	f.enroll(t, "alice")
	f.s.Reset("alice", "admin")

	for _, k := range []EventKind{EventEnroll, EventConfirm, EventSuccess, EventRecoveryUsed, EventFailure,
		EventReplay, EventLockout, EventLockedRefusal, EventDisable, EventReset, EventLockoutCleared} {
		if f.audit.count(k) == 0 {
			t.Errorf("no %s event", k)
		}
	}
	for _, ev := range f.audit.events {
		if ev.User != "alice" || ev.Time.IsZero() {
			t.Errorf("event %+v: missing user or time", ev)
		}
		text := fmt.Sprintf("%+v", ev)
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("event %s contains a code or secret", text)
			}
		}
	}
	if ev := f.audit.events[len(f.audit.events)-1]; ev.Kind != EventReset || ev.ClientID != "admin" {
		t.Errorf("last event %+v, want a reset by admin", ev)
	}
}

func TestPolicyValidate(t *testing.T) {
	t.Parallel()
	if err := DefaultPolicy().Validate(); err != nil {
		t.Fatalf("default policy: %v", err)
	}
	p := Policy{Mode: "sometimes", Actions: []string{"unlock", "fly"}, StepUpTTL: -1}
	err := p.Validate()
	if err == nil {
		t.Fatal("bad policy accepted")
	}
	for _, key := range []string{"twofa.mode", "twofa.actions", "\"fly\"", "twofa.step_up_ttl", "twofa.max_failures",
		"twofa.failure_window", "twofa.lockout_duration", "twofa.issuer"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error %q does not mention %s", err, key)
		}
	}
	if _, err := New(boltKV(t, openDB(t, t.TempDir()+"/x.db")), testKey, p, nil, nil); err == nil {
		t.Error("New accepted a bad policy")
	}
}
