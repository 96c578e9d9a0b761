package twofa

import (
	"testing"
	"time"

	"telematics/pkg/protocol"
)

func TestLockout(t *testing.T) {
	t.Parallel()
	const (
		window  = 5 * time.Minute
		lockout = 15 * time.Minute
	)
	type step struct {
		advance time.Duration // move the clock first
		do      string        // "fail" (wrong TOTP), "password", "recovery" (wrong recovery code), "ok" (right TOTP, at most one accepted per case)
		want    protocol.Reason
	}
	fail := func(adv time.Duration, want protocol.Reason) step { return step{adv, "fail", want} }
	cases := []struct {
		name  string
		steps []step
	}{
		{"four failures then a right code", []step{
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			{time.Second, "ok", protocol.ReasonNone},
		}},
		{"fifth failure locks, then a right code is refused", []step{
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(time.Second, protocol.ReasonLockedOut),
			{time.Second, "ok", protocol.ReasonLockedOut},
		}},
		{"failures exactly one window old have left it", []step{
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(window, protocol.ReasonTOTPInvalid),
			{0, "ok", protocol.ReasonNone},
		}},
		{"failures a millisecond younger than the window still count", []step{
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(window-time.Millisecond, protocol.ReasonLockedOut),
		}},
		{"sliding window", []step{
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(2*time.Minute, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			// The first two are now 5 min old: three in the window after this one.
			fail(3*time.Minute, protocol.ReasonTOTPInvalid),
			fail(0, protocol.ReasonTOTPInvalid),
			fail(0, protocol.ReasonLockedOut),
		}},
		{"lockout ends exactly after its duration", []step{
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(0, protocol.ReasonLockedOut),
			{lockout - time.Millisecond, "ok", protocol.ReasonLockedOut},
			{time.Millisecond, "ok", protocol.ReasonNone},
		}},
		{"attempts during a lockout are not counted", []step{
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(0, protocol.ReasonTOTPInvalid), fail(0, protocol.ReasonTOTPInvalid),
			fail(0, protocol.ReasonLockedOut),
			fail(time.Minute, protocol.ReasonLockedOut), fail(0, protocol.ReasonLockedOut),
			fail(lockout-time.Minute, protocol.ReasonTOTPInvalid), // one failure on a clean slate
			{0, "ok", protocol.ReasonNone},
		}},
		{"password, recovery and TOTP failures add up", []step{
			{0, "password", protocol.ReasonNone}, {0, "password", protocol.ReasonNone},
			{0, "recovery", protocol.ReasonTOTPInvalid}, fail(0, protocol.ReasonTOTPInvalid),
			{0, "password", protocol.ReasonLockedOut},
			{0, "ok", protocol.ReasonLockedOut},
			{0, "password", protocol.ReasonLockedOut},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			secret, _ := f.enroll(t, "alice")
			for i, st := range tc.steps {
				f.clock.Advance(st.advance)
				var err error
				switch st.do {
				case "fail":
					_, err = f.s.Verify("alice", "alice-1", wrongCode(t, secret, f.clock.Now()))
				case "password":
					err = f.s.RecordFailure("alice", "alice-login", FactorPassword)
				case "recovery":
					_, err = f.s.VerifyRecovery("alice", "alice-1", "aaaa-bbbb-cccc-dddd")
				case "ok":
					// The next step's code (within the skew): never a replay of the
					// confirmation, and the clock stays where the case put it.
					_, err = f.s.Verify("alice", "alice-1", code(t, secret, f.clock.Now().Add(PeriodSeconds*time.Second)))
				}
				if got := protocol.ReasonOf(err); got != st.want {
					t.Fatalf("step %d (%s after %v): %q (%v), want %q", i, st.do, st.advance, got, err, st.want)
				}
				if st.want == protocol.ReasonLockedOut {
					wantIs(t, err, ErrLockedOut)
					wantReason(t, f.s.CheckLocked("alice"), protocol.ReasonLockedOut)
				}
			}
		})
	}
}

func TestLockoutAuditAndStatus(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	secret, _ := f.enroll(t, "alice")
	for range 5 {
		f.s.Verify("alice", "alice-1", wrongCode(t, secret, f.clock.Now()))
	}
	st, err := f.s.Status("alice")
	if err != nil {
		t.Fatal(err)
	}
	if want := t0.Add(time.Minute + 15*time.Minute); !st.LockedUntil.Equal(want) {
		t.Errorf("locked until %v, want %v", st.LockedUntil, want)
	}
	f.s.Verify("alice", "alice-1", code(t, secret, f.clock.Now()))
	if got := f.audit.count(EventFailure); got != 5 {
		t.Errorf("%d failure events, want 5", got)
	}
	if got := f.audit.count(EventLockout); got != 1 {
		t.Errorf("%d lockout events, want 1", got)
	}
	if got := f.audit.count(EventLockedRefusal); got != 1 {
		t.Errorf("%d locked_refusal events, want 1", got)
	}

	// An administrator can end it early.
	if err := f.s.ClearLockout("alice", "admin"); err != nil {
		t.Fatal(err)
	}
	wantReason(t, f.s.CheckLocked("alice"), protocol.ReasonNone)
	if _, err := f.s.Verify("alice", "alice-1", code(t, secret, f.clock.Now())); err != nil {
		t.Fatal(err)
	}
}

// TestLockoutWithoutEnrollment: password failures lock out users who never enrolled in 2FA.
func TestLockoutWithoutEnrollment(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(p *Policy) { p.MaxFailures = 3 })
	for i := range 3 {
		err := f.s.RecordFailure("bob", "bob-login", FactorPassword)
		if i < 2 {
			wantReason(t, err, protocol.ReasonNone)
		} else {
			wantReason(t, err, protocol.ReasonLockedOut)
		}
	}
	wantReason(t, f.s.CheckLocked("bob"), protocol.ReasonLockedOut)
	f.clock.Advance(15 * time.Minute)
	wantReason(t, f.s.CheckLocked("bob"), protocol.ReasonNone)
	// A user with no failures has no lockout record at all.
	wantReason(t, f.s.CheckLocked("carol"), protocol.ReasonNone)
}
