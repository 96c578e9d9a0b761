package twofa

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"telematics/gateway/kv"
	"telematics/pkg/protocol"
)

// Mode is the rollout stage of 2FA, so that it can be turned on user by user.
type Mode string

// Rollout modes.
const (
	ModeOff      Mode = "off"      // never ask for a code (a code presented anyway is still checked)
	ModeEnrolled Mode = "enrolled" // ask users who have enrolled
	ModeRequired Mode = "required" // ask everyone; users who have not enrolled are refused until they do
)

// Actions that are not vehicle commands but can be guarded like them.
const (
	ActionKeyPair   = "key_pair"   // add a phone key to a car
	ActionKeyShare  = "key_share"  // give another user a key
	ActionKeyRevoke = "key_revoke" // revoke a key
	// ActionLogin stands for the password login; it needs a code when LoginRequiresTOTP is set.
	ActionLogin = "login"
)

// DefaultIssuer is the issuer authenticator apps show next to the account.
const DefaultIssuer = "Telematics Gateway"

// Policy says which actions need a second factor and how brute force is stopped. The yaml
// tags are the keys under the gateway configuration's "twofa" section.
type Policy struct {
	Mode Mode `yaml:"mode" env:"GATEWAY_TWOFA_MODE"`
	// Actions need a second factor: protocol actions and ActionKey*.
	Actions []string `yaml:"actions"`
	// StepUpTTL is how long a session stays elevated after a code was accepted in it; 0 asks
	// for a code on every guarded action.
	StepUpTTL         time.Duration `yaml:"step_up_ttl" env:"GATEWAY_TWOFA_STEP_UP_TTL"`
	LoginRequiresTOTP bool          `yaml:"login_requires_totp" env:"GATEWAY_TWOFA_LOGIN_REQUIRES_TOTP"`
	// MaxFailures failures within FailureWindow lock the user out for LockoutDuration.
	MaxFailures     int           `yaml:"max_failures" env:"GATEWAY_TWOFA_MAX_FAILURES"`
	FailureWindow   time.Duration `yaml:"failure_window" env:"GATEWAY_TWOFA_FAILURE_WINDOW"`
	LockoutDuration time.Duration `yaml:"lockout_duration" env:"GATEWAY_TWOFA_LOCKOUT_DURATION"`
	// Issuer is shown by authenticator apps.
	Issuer string `yaml:"issuer" env:"GATEWAY_TWOFA_ISSUER"`
}

// DefaultPolicy: mode enrolled; unlock, open_trunk, remote_start and key changes guarded;
// step-up for 5 minutes; 5 failures in 5 minutes lock out for 15 minutes.
func DefaultPolicy() Policy {
	return Policy{
		Mode: ModeEnrolled,
		Actions: []string{
			string(protocol.ActionUnlock), string(protocol.ActionOpenTrunk), string(protocol.ActionRemoteStart),
			ActionKeyPair, ActionKeyShare, ActionKeyRevoke,
		},
		StepUpTTL:       5 * time.Minute,
		MaxFailures:     5,
		FailureWindow:   5 * time.Minute,
		LockoutDuration: 15 * time.Minute,
		Issuer:          DefaultIssuer,
	}
}

// Validate reports every problem at once, each with its key.
func (p Policy) Validate() error {
	var errs []error
	switch p.Mode {
	case ModeOff, ModeEnrolled, ModeRequired:
	default:
		errs = append(errs, fmt.Errorf("twofa.mode: %q is not off, enrolled or required", p.Mode))
	}
	for _, a := range p.Actions {
		if !protocol.Action(a).Valid() && a != ActionKeyPair && a != ActionKeyShare && a != ActionKeyRevoke {
			errs = append(errs, fmt.Errorf("twofa.actions: unknown action %q", a))
		}
	}
	if p.StepUpTTL < 0 {
		errs = append(errs, fmt.Errorf("twofa.step_up_ttl: %v is negative", p.StepUpTTL))
	}
	if p.MaxFailures < 1 || p.MaxFailures > maxFailuresKept {
		errs = append(errs, fmt.Errorf("twofa.max_failures: %d is not between 1 and %d", p.MaxFailures, maxFailuresKept))
	}
	if p.FailureWindow < time.Millisecond {
		errs = append(errs, fmt.Errorf("twofa.failure_window: %v must be at least 1ms", p.FailureWindow))
	}
	if p.LockoutDuration < time.Millisecond {
		errs = append(errs, fmt.Errorf("twofa.lockout_duration: %v must be at least 1ms", p.LockoutDuration))
	}
	if p.Issuer == "" {
		errs = append(errs, errors.New("twofa.issuer: must not be empty"))
	}
	return errors.Join(errs...)
}

func (p Policy) clone() Policy {
	p.Actions = slices.Clone(p.Actions)
	return p
}

// guards reports whether the policy asks for a second factor for action at all.
func (s *Service) guards(action string) bool {
	if s.policy.Mode == ModeOff {
		return false
	}
	if action == ActionLogin {
		return s.policy.LoginRequiresTOTP
	}
	return s.actions[action]
}

// Decision is what Decide allowed.
type Decision struct {
	// Factors are the second factors that authorized the action: FactorTOTP or
	// FactorRecovery (a code presented now), FactorStepUp (the session was elevated by an
	// earlier code), or none when the policy did not ask. The gateway adds its own "key".
	Factors []string
	// Step is the TOTP time step accepted now, if a TOTP code was.
	Step int64
}

// Decide is the gateway's 2FA check for one request by user in app session clientID (the
// MQTT client id; "" outside a session) for action, with the code the request carried (""
// if none). It returns nil or a refusal with reason totp_required,
// totp_enrollment_required, totp_invalid, totp_replayed or locked_out.
//
//   - A presented code is always verified, whatever the mode and the action, and never
//     ignored: a wrong one fails the request even when the session is elevated, and one from
//     a user without an active enrollment is refused totp_enrollment_required. A six-digit
//     code is taken for TOTP, anything else for a recovery code. An accepted code elevates
//     the session for StepUpTTL.
//   - Without a code: mode off never asks; mode enrolled asks only users who have enrolled;
//     mode required asks everyone and refuses users who have not enrolled. A user who is
//     asked is refused locked_out during a lockout (even in an elevated session), passes in
//     an elevated session, and is told totp_required otherwise.
//
// Actions that are not guarded pass without a code even during a lockout: locking a car
// must keep working while someone hammers the owner's account.
func (s *Service) Decide(user, clientID, action, code string) (Decision, error) {
	if err := checkUser(user); err != nil {
		return Decision{}, err
	}
	if code = cleanCode(code); code != "" {
		o, err := s.verifyElevate(user, clientID, action, factorOf(code), code)
		if err != nil {
			return Decision{}, err
		}
		s.sweepStepUps(o.now)
		return Decision{Factors: []string{o.factor}, Step: o.step}, nil
	}
	if !s.guards(action) {
		return Decision{}, nil
	}
	var d Decision
	err := s.kv.View(context.Background(), func(tx kv.Tx) error {
		var err error
		d, err = s.DecideTx(tx, user, clientID, action)
		return err
	})
	return d, err
}

// LockoutTx refuses locked_out while user is locked out, reading tx: a gateway replica checks
// it in the transaction that records its decision, after the request's code was verified in
// transactions of its own.
func (s *Service) LockoutTx(tx kv.Tx, user string) error {
	st, err := s.statusTx(tx, user, s.clock.Now())
	if err != nil {
		return fmt.Errorf("2fa status of %q: %w", user, err)
	}
	if !st.LockedUntil.IsZero() {
		return refuse(ErrLockedOut, "user %q until %s", user, st.LockedUntil.UTC().Format(time.RFC3339))
	}
	return nil
}

// DecideTx is Decide for a request that carries no code, reading the user's enrollment,
// lockout and step-up in tx: a gateway replica reads them in the transaction that records its
// decision, so a lockout or an enrollment change committed meanwhile by another replica makes
// that transaction run again. It writes nothing.
func (s *Service) DecideTx(tx kv.Tx, user, clientID, action string) (Decision, error) {
	if err := checkUser(user); err != nil {
		return Decision{}, err
	}
	if !s.guards(action) {
		return Decision{}, nil
	}
	now := s.clock.Now()
	st, err := s.statusTx(tx, user, now)
	if err != nil {
		return Decision{}, fmt.Errorf("2fa status of %q: %w", user, err)
	}
	if !st.Enrolled && s.policy.Mode != ModeRequired {
		return Decision{}, nil
	}
	if !st.LockedUntil.IsZero() {
		return Decision{}, refuse(ErrLockedOut, "user %q until %s", user, st.LockedUntil.UTC().Format(time.RFC3339))
	}
	if !st.Enrolled {
		return Decision{}, refuse(ErrEnrollmentRequired, "user %q, action %q", user, truncate(action))
	}
	if up, err := s.elevatedTx(tx, user, clientID, now); err != nil {
		return Decision{}, fmt.Errorf("2fa step-up of %q: %w", user, err)
	} else if up {
		return Decision{Factors: []string{FactorStepUp}}, nil
	}
	return Decision{}, refuse(ErrCodeRequired, "user %q, action %q", user, truncate(action))
}

// RequireForKeyChange is the rule for key changes (pairing, sharing, revoking keys): unless
// 2FA is off altogether, they need an enrolled user and a code, or a session a code elevated.
func (s *Service) RequireForKeyChange(user, session, action, code string) error {
	if s.Policy().Mode == ModeOff {
		return nil
	}
	enrolled, err := s.Enrolled(user)
	if err != nil {
		return err
	}
	if !enrolled {
		return protocol.Refuse(protocol.ReasonTOTPEnrollmentRequired, "key changes need two-factor authentication: enroll with `vehicle-sim app totp enroll`")
	}
	_, err = s.Decide(user, session, action, code)
	return err
}

// EndSession drops the elevation of one app session; the gateway calls it when the client
// disconnects from the embedded broker, or another connection takes its client id
// (broker.OnAppSessionEnd). Behind an external broker sessions are phone keys and end only
// with StepUpTTL. Should the store fail, the elevation ends with its StepUpTTL.
func (s *Service) EndSession(user, clientID string) {
	if clientID == "" {
		return
	}
	_ = s.kv.Update(context.Background(), func(tx kv.Tx) error {
		return tx.Delete(bucketStepUp, stepUpKey(user, clientID))
	})
}

// maxStepUpClientID bounds the client ids an elevation is stored for (MQTT allows 65535
// bytes); a session with a longer one is not elevated, and asked for a code each time.
const maxStepUpClientID = 256

func stepUpKey(user, clientID string) []byte { return []byte(user + "/" + clientID) }

// elevateTx marks the session elevated until now+StepUpTTL, inside the transaction that
// accepted the code.
func (s *Service) elevateTx(tx kv.Tx, user, clientID string, now time.Time) error {
	if clientID == "" || len(clientID) > maxStepUpClientID || s.policy.StepUpTTL <= 0 {
		return nil
	}
	return tx.Put(bucketStepUp, stepUpKey(user, clientID), binary.BigEndian.AppendUint64(nil, uint64(now.Add(s.policy.StepUpTTL).UnixMilli())))
}

// sweepStepUps now and then deletes expired elevations, so the bucket stays as small as the
// set of recently active sessions. Each replica sweeps at most once per StepUpTTL, in small
// transactions (etcd's --max-txn-ops).
func (s *Service) sweepStepUps(now time.Time) {
	s.mu.Lock()
	due := now.Sub(s.lastSweep) >= s.policy.StepUpTTL
	if due {
		s.lastSweep = now
	}
	s.mu.Unlock()
	if !due {
		return
	}
	nowMs := now.UnixMilli()
	// An error leaves the rest to the next sweep.
	_ = s.deleteStepUps(func(v []byte) bool { return len(v) != 8 || int64(binary.BigEndian.Uint64(v)) <= nowMs })
}

// EndAllSessions ends every elevation in the store. A gateway with the embedded broker calls
// it at start: its app sessions did not survive the restart, so neither do their elevations
// (an elevation is bound to a client id, which the first connection after a restart may take
// without the broker seeing a takeover). Replicas behind an external broker do not: their
// sessions are phone keys, and the other replicas' elevations are live.
func (s *Service) EndAllSessions() error {
	return s.deleteStepUps(func([]byte) bool { return true })
}

// deleteStepUps deletes the elevations whose stored value dead reports, found in one
// snapshot and deleted in small transactions that look at each again (etcd's
// --max-txn-ops).
func (s *Service) deleteStepUps(dead func(v []byte) bool) error {
	var keys [][]byte
	err := s.kv.View(context.Background(), func(tx kv.Tx) error {
		return tx.Scan(bucketStepUp, nil, nil, func(k, v []byte) error {
			if dead(v) {
				keys = append(keys, bytes.Clone(k))
			}
			return nil
		})
	})
	for err == nil && len(keys) > 0 {
		batch := keys[:min(len(keys), sweepBatch)]
		keys = keys[len(batch):]
		err = s.kv.Update(context.Background(), func(tx kv.Tx) error {
			for _, k := range batch {
				v, err := tx.Get(bucketStepUp, k)
				if err != nil {
					return err
				}
				if v != nil && dead(v) {
					if err := tx.Delete(bucketStepUp, k); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("end step-up sessions: %w", err)
	}
	return nil
}

// sweepBatch bounds the elevations one sweep transaction deletes.
const sweepBatch = 50

// elevatedTx reports whether clientID's session of user is elevated at now, in tx; the
// elevation ends exactly StepUpTTL after the code was accepted.
func (s *Service) elevatedTx(tx kv.Tx, user, clientID string, now time.Time) (bool, error) {
	if clientID == "" || len(clientID) > maxStepUpClientID {
		return false, nil
	}
	v, err := tx.Get(bucketStepUp, stepUpKey(user, clientID))
	if err != nil || len(v) != 8 {
		return false, err
	}
	return now.UnixMilli() < int64(binary.BigEndian.Uint64(v)), nil
}

// endUserSessions drops every elevation of user, when the user's secret changes or goes.
func (s *Service) endUserSessions(user string) error {
	err := s.kv.Update(context.Background(), func(tx kv.Tx) error {
		var keys [][]byte
		err := tx.Scan(bucketStepUp, []byte(user+"/"), nil, func(k, _ []byte) error {
			keys = append(keys, bytes.Clone(k))
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := tx.Delete(bucketStepUp, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("end the step-up sessions of %q: %w", user, err)
	}
	return nil
}
