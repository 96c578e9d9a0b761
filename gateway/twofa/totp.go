package twofa

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"fmt"
	"image/png"
	"io"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"telematics/gateway/kv"
	"telematics/pkg/protocol"
)

// TOTP parameters (RFC 6238 defaults), fixed so that every authenticator app works.
const (
	PeriodSeconds = 30
	Digits        = 6
	SkewSteps     = 1  // steps accepted either side of the current one
	SecretBytes   = 20 // 160 bits, RFC 4226's recommendation for HMAC-SHA1
	qrSizePx      = 256
)

var (
	b32NoPad = base32.StdEncoding.WithPadding(base32.NoPadding)
	codeOpts = totp.ValidateOpts{Period: PeriodSeconds, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}
)

// StepAt is the TOTP time step of t: unix seconds / 30, rounded down.
func StepAt(t time.Time) int64 {
	sec := t.Unix()
	step := sec / PeriodSeconds
	if sec%PeriodSeconds < 0 {
		step--
	}
	return step
}

// isTOTPShape reports whether code looks like a TOTP code: exactly six ASCII digits. Anything
// else presented where either is allowed is taken for a recovery code.
func isTOTPShape(code string) bool {
	if len(code) != Digits {
		return false
	}
	for i := 0; i < len(code); i++ {
		if code[i] < '0' || code[i] > '9' {
			return false
		}
	}
	return true
}

// matchStep returns the highest step within ±SkewSteps of now whose code equals code, or
// ok=false. All candidates are computed and compared in constant time, so the time taken
// does not tell which one matched or how much of a code was right.
func matchStep(secret []byte, code string, now time.Time) (step int64, ok bool, err error) {
	if !isTOTPShape(code) {
		return 0, false, nil
	}
	secretB32 := b32NoPad.EncodeToString(secret)
	cur := StepAt(now)
	found := 0
	for st := cur - SkewSteps; st <= cur+SkewSteps; st++ {
		if st < 0 {
			continue
		}
		want, err := totp.GenerateCodeCustom(secretB32, time.Unix(st*PeriodSeconds, 0), codeOpts)
		if err != nil {
			return 0, false, fmt.Errorf("compute totp code: %w", err)
		}
		eq := subtle.ConstantTimeCompare([]byte(want), []byte(code))
		found |= eq
		// Candidates ascend, so the last match wins: the highest step.
		step = int64(subtle.ConstantTimeSelect(eq, int(st), int(step)))
	}
	return step, found == 1, nil
}

// Verify checks a TOTP code of the user's active enrollment and returns its time step. The
// step is stored in the same transaction that accepts it, so the code (and every code of an
// earlier step) is refused from then on as totp_replayed, across restarts and however many
// requests race. A wrong code counts towards the lockout; during a lockout every code, right
// or wrong, is refused as locked_out. Verify does not elevate a session: Decide does.
func (s *Service) Verify(user, clientID, code string) (step int64, err error) {
	o, err := s.verify(user, clientID, "", FactorTOTP, code)
	if err != nil {
		return 0, err
	}
	return o.step, nil
}

// verify runs verifyTx for one factor (FactorTOTP or FactorRecovery) and stores the result;
// action is only for the audit events.
func (s *Service) verify(user, clientID, action, factor, code string) (*op, error) {
	return s.verifyAndElevate(user, clientID, action, factor, code, false)
}

// verifyElevate is verify that also elevates the session (Decide), in the transaction that
// accepts the code.
func (s *Service) verifyElevate(user, clientID, action, factor, code string) (*op, error) {
	return s.verifyAndElevate(user, clientID, action, factor, code, true)
}

func (s *Service) verifyAndElevate(user, clientID, action, factor, code string, elevate bool) (*op, error) {
	if err := checkUser(user); err != nil {
		return nil, err
	}
	code = cleanCode(code)
	o, err := s.writeAction(user, clientID, action, s.clock.Now(), func(tx kv.Tx, o *op) error {
		rec, ok, err := s.verifyTx(tx, o, factor, code)
		if err != nil || !ok {
			return err
		}
		if elevate {
			if err := s.elevateTx(tx, user, clientID, o.now); err != nil {
				return err
			}
		}
		return putTOTP(tx, user, rec)
	})
	if err != nil {
		return nil, err
	}
	return o, o.refusal
}

// verifyTx checks code as factor against the user's active enrollment inside tx: lockout
// first, then the code. On success it returns the record updated in memory (last step, or
// the spent recovery code removed) for the caller to store or replace; on refusal it sets
// o.refusal and has already stored the failure.
func (s *Service) verifyTx(tx kv.Tx, o *op, factor, code string) (*totpRecord, bool, error) {
	lr, locked, err := s.lockedTx(tx, o, factor)
	if err != nil || locked {
		return nil, false, err
	}
	rec, err := getTOTP(tx, o.user)
	if err != nil {
		return nil, false, err
	}
	if rec == nil || rec.Active == nil {
		// Nothing to guess against: not a failure.
		o.refusal = refuse(ErrNotEnrolled, "user %q", o.user)
		return nil, false, nil
	}
	ok, err := s.proveTx(tx, o, lr, rec, factor, code)
	return rec, ok, err
}

// proveTx checks code against rec's active secret (FactorTOTP) or unused recovery codes
// (FactorRecovery) for a user known not to be locked out (lr from lockedTx).
func (s *Service) proveTx(tx kv.Tx, o *op, lr *lockRecord, rec *totpRecord, factor, code string) (bool, error) {
	switch factor {
	case FactorTOTP:
		secret, err := unseal(s.aead, o.user, rec.Active.Sealed)
		if err != nil {
			return false, err
		}
		step, ok, err := matchStep(secret, code, o.now)
		clear(secret)
		if err != nil {
			return false, err
		}
		if !ok {
			o.refusal = refuse(ErrInvalidCode, "user %q", o.user)
			return false, s.failTx(tx, o, lr, factor, protocol.ReasonTOTPInvalid)
		}
		if step <= rec.LastStep {
			o.event(EventReplay, factor, protocol.ReasonTOTPReplayed, step)
			o.refusal = refuse(ErrReplayed, "user %q, step %d not after %d", o.user, step, rec.LastStep)
			return false, nil
		}
		rec.LastStep = step
		o.step, o.factor = step, factor
		o.event(EventSuccess, factor, "", step)
		return true, nil
	case FactorRecovery:
		i := matchRecovery(rec.Recovery, o.user, code)
		if i < 0 {
			o.refusal = refuse(ErrInvalidCode, "user %q, recovery code", o.user)
			return false, s.failTx(tx, o, lr, factor, protocol.ReasonTOTPInvalid)
		}
		rec.Recovery = append(rec.Recovery[:i], rec.Recovery[i+1:]...)
		o.factor, o.left = factor, len(rec.Recovery)
		o.event(EventRecoveryUsed, factor, "", 0)
		return true, nil
	}
	return false, fmt.Errorf("unknown factor %q", factor)
}

// factorOf is the factor a code presented where either is allowed stands for ("" for none).
func factorOf(code string) string {
	if code == "" {
		return ""
	}
	if isTOTPShape(code) {
		return FactorTOTP
	}
	return FactorRecovery
}

// Enrollment is what a user needs to add the account to an authenticator app.
type Enrollment struct {
	URL    string // otpauth://totp/Issuer:user?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30
	Secret string // the same secret, base32 without padding, for typing in by hand
	PNG    []byte // a QR code of URL, 256×256
}

// Enroll creates a pending TOTP secret for the user and returns it; it becomes active only
// when Confirm gets a valid code for it. Enrolling again replaces an unconfirmed secret. If
// the user already has an active enrollment, proof (a current TOTP code or a recovery code)
// is required and spent, and the active secret stays in force until the new one is
// confirmed. The response holds the secret: send it to the user only, never to a log.
func (s *Service) Enroll(user, clientID, proof string) (Enrollment, error) {
	if err := checkUser(user); err != nil {
		return Enrollment{}, err
	}
	// Everything random is made before the transaction, so a re-run of the batch function
	// stores the same secret the caller returns.
	raw := make([]byte, SecretBytes)
	if _, err := io.ReadFull(rand.Reader, raw); err != nil {
		return Enrollment{}, fmt.Errorf("generate totp secret: %w", err)
	}
	defer clear(raw)
	key, err := totp.Generate(totp.GenerateOpts{
		Issuer: s.policy.Issuer, AccountName: user, Period: PeriodSeconds,
		Secret: raw, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1,
	})
	if err != nil {
		return Enrollment{}, fmt.Errorf("build otpauth url: %w", err)
	}
	sealed, err := seal(s.aead, user, raw)
	if err != nil {
		return Enrollment{}, err
	}
	proof = cleanCode(proof)
	o, err := s.write(user, clientID, s.clock.Now(), func(tx kv.Tx, o *op) error {
		lr, locked, err := s.lockedTx(tx, o, factorOf(proof))
		if err != nil || locked {
			return err
		}
		rec, err := getTOTP(tx, user)
		if err != nil {
			return err
		}
		if rec == nil {
			rec = &totpRecord{}
		}
		if rec.Active != nil {
			if proof == "" {
				o.refusal = refuse(ErrCodeRequired, "user %q is enrolled: re-enrolling needs a current code or a recovery code", user)
				return nil
			}
			ok, err := s.proveTx(tx, o, lr, rec, factorOf(proof), proof)
			if err != nil || !ok {
				return err
			}
		}
		rec.Pending = &sealedSecret{Sealed: sealed, AtMs: o.now.UnixMilli()}
		o.event(EventEnroll, "", "", 0)
		return putTOTP(tx, user, rec)
	})
	if err != nil {
		return Enrollment{}, err
	}
	if o.refusal != nil {
		return Enrollment{}, o.refusal
	}
	img, err := key.Image(qrSizePx, qrSizePx)
	if err != nil {
		return Enrollment{}, fmt.Errorf("render qr code: %w", err)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return Enrollment{}, fmt.Errorf("encode qr png: %w", err)
	}
	return Enrollment{URL: key.URL(), Secret: key.Secret(), PNG: buf.Bytes()}, nil
}

// Confirm activates the user's pending secret with a valid code of it, and returns ten new
// single-use recovery codes (only their hashes are stored; any earlier ones are void). The
// confirming code's step counts as used. A wrong code counts towards the lockout. Sessions
// elevated under the previous secret lose their elevation.
func (s *Service) Confirm(user, clientID, code string) (recoveryCodes []string, err error) {
	if err := checkUser(user); err != nil {
		return nil, err
	}
	codes, hashes, err := newRecoveryCodes(user)
	if err != nil {
		return nil, err
	}
	code = cleanCode(code)
	o, err := s.write(user, clientID, s.clock.Now(), func(tx kv.Tx, o *op) error {
		lr, locked, err := s.lockedTx(tx, o, FactorTOTP)
		if err != nil || locked {
			return err
		}
		rec, err := getTOTP(tx, user)
		if err != nil {
			return err
		}
		if rec == nil || rec.Pending == nil {
			o.refusal = refuse(ErrNoPendingEnrollment, "user %q", user)
			return nil
		}
		secret, err := unseal(s.aead, user, rec.Pending.Sealed)
		if err != nil {
			return err
		}
		step, ok, err := matchStep(secret, code, o.now)
		clear(secret)
		if err != nil {
			return err
		}
		if !ok {
			o.refusal = refuse(ErrInvalidCode, "user %q, confirming enrollment", user)
			return s.failTx(tx, o, lr, FactorTOTP, protocol.ReasonTOTPInvalid)
		}
		rec.Active = &sealedSecret{Sealed: rec.Pending.Sealed, AtMs: o.now.UnixMilli()}
		rec.Pending = nil
		rec.LastStep = step
		rec.Recovery = hashes
		o.step = step
		o.event(EventConfirm, FactorTOTP, "", step)
		return putTOTP(tx, user, rec)
	})
	if err != nil {
		return nil, err
	}
	if o.refusal != nil {
		return nil, o.refusal
	}
	if err := s.endUserSessions(user); err != nil {
		return nil, err
	}
	return codes, nil
}

// Disable removes the user's enrollment. An active one needs proof (a current TOTP code or a
// recovery code); a merely pending one is cancelled without. Elevated sessions end.
func (s *Service) Disable(user, clientID, proof string) error {
	if err := checkUser(user); err != nil {
		return err
	}
	proof = cleanCode(proof)
	o, err := s.write(user, clientID, s.clock.Now(), func(tx kv.Tx, o *op) error {
		lr, locked, err := s.lockedTx(tx, o, factorOf(proof))
		if err != nil || locked {
			return err
		}
		rec, err := getTOTP(tx, user)
		if err != nil {
			return err
		}
		if rec == nil {
			o.refusal = refuse(ErrNotEnrolled, "user %q", user)
			return nil
		}
		if rec.Active != nil {
			if proof == "" {
				o.refusal = refuse(ErrCodeRequired, "user %q: disabling 2FA needs a current code or a recovery code", user)
				return nil
			}
			ok, err := s.proveTx(tx, o, lr, rec, factorOf(proof), proof)
			if err != nil || !ok {
				return err
			}
		}
		o.event(EventDisable, o.factor, "", o.step)
		return deleteTOTP(tx, user)
	})
	if err != nil {
		return err
	}
	if o.refusal != nil {
		return o.refusal
	}
	return s.endUserSessions(user)
}

// Reset removes the user's enrollment without proof: for an administrator helping a user who
// lost both the authenticator and the recovery codes (actor is recorded as the event's client
// id). The lockout state is kept; see ClearLockout.
func (s *Service) Reset(user, actor string) error {
	if err := checkUser(user); err != nil {
		return err
	}
	o, err := s.write(user, actor, s.clock.Now(), func(tx kv.Tx, o *op) error {
		rec, err := getTOTP(tx, user)
		if err != nil {
			// A record this build cannot read is exactly what an administrator may need to
			// remove.
			rec = &totpRecord{}
		}
		if rec == nil {
			o.refusal = refuse(ErrNotEnrolled, "user %q", user)
			return nil
		}
		o.event(EventReset, "", "", 0)
		return deleteTOTP(tx, user)
	})
	if err != nil {
		return err
	}
	if o.refusal != nil {
		return o.refusal
	}
	return s.endUserSessions(user)
}

// Status is what the user's 2FA looks like now, for the HTTP API and the admin.
type Status struct {
	Enrolled          bool      // an active, confirmed secret
	Pending           bool      // an enrollment awaiting Confirm
	RecoveryCodesLeft int       // unused recovery codes
	LockedUntil       time.Time // zero unless locked out now
	RecentFailures    int       // failures still inside the window
}

// Status reports the user's enrollment and lockout state.
func (s *Service) Status(user string) (Status, error) {
	if err := checkUser(user); err != nil {
		return Status{}, err
	}
	now := s.clock.Now()
	var st Status
	err := s.kv.View(context.Background(), func(tx kv.Tx) error {
		var err error
		st, err = s.statusTx(tx, user, now)
		return err
	})
	if err != nil {
		return Status{}, fmt.Errorf("2fa status of %q: %w", user, err)
	}
	return st, nil
}

// statusTx is Status inside tx, at now.
func (s *Service) statusTx(tx kv.Tx, user string, now time.Time) (Status, error) {
	var st Status
	rec, err := getTOTP(tx, user)
	if err != nil {
		return st, err
	}
	if rec != nil {
		st.Enrolled = rec.Active != nil
		st.Pending = rec.Pending != nil
		st.RecoveryCodesLeft = len(rec.Recovery)
	}
	lr, err := getLock(tx, user)
	if err != nil {
		return st, err
	}
	if lr.lockedAt(now) {
		st.LockedUntil = time.UnixMilli(lr.LockedUntilMs)
	}
	oldest := now.UnixMilli() - s.policy.FailureWindow.Milliseconds()
	for _, t := range lr.Failures {
		if t > oldest {
			st.RecentFailures++
		}
	}
	return st, nil
}

// Enrolled reports whether the user has an active (confirmed) enrollment. A storage error is
// returned, not taken for "no": under ModeEnrolled that would waive the second factor.
func (s *Service) Enrolled(user string) (bool, error) {
	st, err := s.Status(user)
	return st.Enrolled, err
}
