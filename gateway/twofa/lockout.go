package twofa

import (
	"context"
	"time"

	"telematics/gateway/kv"
	"telematics/pkg/protocol"
)

// Brute-force lockout (OWASP ASVS V2.2.1, V2.8): MaxFailures failures of any factor (TOTP,
// recovery code, or another one a caller reports with RecordFailure) within FailureWindow
// lock the user out for LockoutDuration. The gateway counts wrong passwords apart
// (accounts.Lockout), so that a stranger who knows only a user name cannot lock the second
// factor of a user who has it. The
// window slides: a success does not erase earlier failures, so an attacker's guesses
// interleaved with the owner's own logins still add up. Attempts during a lockout are refused
// without being checked and are not counted, so a lockout ends exactly LockoutDuration after
// it began. Replays are not failures: they prove knowledge of a real code, not guessing, and
// counting them would lock out a user whose app retried a request.

// RecordFailure counts a failed attempt of another factor, typically a wrong password
// (factor FactorPassword), towards the user's lockout. It returns nil if the user is not
// locked out after it, a locked_out refusal if this failure started a lockout or one was
// already running (the attempt is then not counted), or a storage error.
func (s *Service) RecordFailure(user, clientID, factor string) error {
	if err := checkUser(user); err != nil {
		return err
	}
	o, err := s.write(user, clientID, s.clock.Now(), func(tx kv.Tx, o *op) error {
		lr, locked, err := s.lockedTx(tx, o, factor)
		if err != nil || locked {
			return err
		}
		return s.failTx(tx, o, lr, factor, protocol.ReasonUnauthenticated)
	})
	if err != nil {
		return err
	}
	if o.refusal != nil {
		return o.refusal
	}
	return nil
}

// CheckLocked returns a locked_out refusal if the user is locked out now, nil if not. It
// reads only and reports no audit event: the password path calls it before checking the
// password and audits its own refusal.
func (s *Service) CheckLocked(user string) error {
	if err := checkUser(user); err != nil {
		return err
	}
	now := s.clock.Now()
	var until int64
	err := s.kv.View(context.Background(), func(tx kv.Tx) error {
		lr, err := getLock(tx, user)
		if err != nil {
			return err
		}
		if lr.lockedAt(now) {
			until = lr.LockedUntilMs
		}
		return nil
	})
	if err != nil {
		return err
	}
	if until != 0 {
		return refuse(ErrLockedOut, "user %q until %s", user, time.UnixMilli(until).UTC().Format(time.RFC3339))
	}
	return nil
}

// ClearLockout forgets the user's failures and ends a running lockout: for an administrator
// (actor is recorded as the event's client id).
func (s *Service) ClearLockout(user, actor string) error {
	if err := checkUser(user); err != nil {
		return err
	}
	_, err := s.write(user, actor, s.clock.Now(), func(tx kv.Tx, o *op) error {
		if err := tx.Delete(bucketLockout, []byte(user)); err != nil {
			return err
		}
		o.event(EventLockoutCleared, "", "", 0)
		return nil
	})
	return err
}

// lockedTx reads the user's lockout state. If a lockout is running it records the refused
// attempt (not counted) and sets the op's refusal.
func (s *Service) lockedTx(tx kv.Tx, o *op, factor string) (*lockRecord, bool, error) {
	lr, err := getLock(tx, o.user)
	if err != nil {
		return nil, false, err
	}
	if lr.lockedAt(o.now) {
		o.event(EventLockedRefusal, factor, protocol.ReasonLockedOut, 0)
		o.refusal = refuse(ErrLockedOut, "user %q until %s", o.user,
			time.UnixMilli(lr.LockedUntilMs).UTC().Format(time.RFC3339))
		return lr, true, nil
	}
	return lr, false, nil
}

// failTx counts one failure in lr (read in this transaction by lockedTx) and stores it. The
// MaxFailures-th failure within the window starts a lockout and turns the refusal into
// locked_out; otherwise the refusal is left to the caller, and reason is what the event
// records.
func (s *Service) failTx(tx kv.Tx, o *op, lr *lockRecord, factor string, reason protocol.Reason) error {
	if countFailure(lr, o.now, s.policy) {
		o.event(EventFailure, factor, protocol.ReasonLockedOut, 0)
		o.event(EventLockout, factor, protocol.ReasonLockedOut, 0)
		o.refusal = refuse(ErrLockedOut, "user %q after %d failures, until %s", o.user,
			s.policy.MaxFailures, time.UnixMilli(lr.LockedUntilMs).UTC().Format(time.RFC3339))
	} else {
		o.event(EventFailure, factor, reason, 0)
	}
	return putLock(tx, o.user, lr)
}

// countFailure adds a failure at now to lr and reports whether it started a lockout.
func countFailure(lr *lockRecord, now time.Time, p Policy) (locked bool) {
	nowMs := now.UnixMilli()
	if lr.LockedUntilMs != 0 && nowMs >= lr.LockedUntilMs {
		lr.LockedUntilMs = 0 // a finished lockout; its failures were cleared when it began
	}
	// Keep the failures younger than the window: one exactly FailureWindow old has left it.
	oldest := nowMs - p.FailureWindow.Milliseconds()
	kept := lr.Failures[:0]
	for _, t := range lr.Failures {
		if t > oldest {
			kept = append(kept, t)
		}
	}
	kept = append(kept, nowMs)
	if len(kept) > maxFailuresKept {
		kept = kept[len(kept)-maxFailuresKept:]
	}
	lr.Failures = kept
	if len(kept) < p.MaxFailures {
		return false
	}
	lr.Failures = nil
	lr.LockedUntilMs = now.Add(p.LockoutDuration).UnixMilli()
	return true
}
