// Package twofa is the gateway's second factor: TOTP (RFC 6238) enrollment and verification
// with replay protection, single-use recovery codes, brute-force lockout, session step-up and
// the rollout policy that decides which app commands need a code. Its state lives in the
// gateway's store (gateway/kv), with every TOTP secret sealed by AES-256-GCM.
package twofa

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"telematics/gateway/kv"
	"telematics/pkg/clock"
	"telematics/pkg/protocol"
)

// Sentinel errors. Every refusal this package returns is a *protocol.Refusal whose Err wraps
// one of them, so callers test with errors.Is and reply with protocol.ReasonOf.
var (
	// ErrLockedOut: too many failures in the window; the user must wait out the lockout.
	// Reason locked_out.
	ErrLockedOut = errors.New("too many failed attempts, locked out")
	// ErrReplayed: the code's time step is at or before the last accepted one (RFC 6238
	// §5.2). Reason totp_replayed.
	ErrReplayed = errors.New("code already used")
	// ErrInvalidCode: the TOTP or recovery code is wrong or malformed. Reason totp_invalid.
	ErrInvalidCode = errors.New("wrong code")
	// ErrNotEnrolled: the user has no confirmed TOTP enrollment. Reason
	// totp_enrollment_required.
	ErrNotEnrolled = errors.New("no active TOTP enrollment")
	// ErrEnrollmentRequired: the policy requires 2FA for this action and the user has not
	// enrolled. Reason totp_enrollment_required.
	ErrEnrollmentRequired = errors.New("TOTP enrollment required by policy")
	// ErrNoPendingEnrollment: Confirm without a preceding Enroll. Reason
	// totp_enrollment_required.
	ErrNoPendingEnrollment = errors.New("no pending enrollment to confirm")
	// ErrCodeRequired: the action (or re-enrollment, or disabling) needs a TOTP or recovery
	// code and none was given. Reason totp_required.
	ErrCodeRequired = errors.New("a TOTP code is required")
	// ErrInvalidUser: the user name is not a valid protocol user. Reason bad_request.
	ErrInvalidUser = errors.New("malformed user name")
)

// reasons maps each sentinel to the reason a client is told: the one place this package's
// errors become protocol reasons.
var reasons = map[error]protocol.Reason{
	ErrLockedOut:           protocol.ReasonLockedOut,
	ErrReplayed:            protocol.ReasonTOTPReplayed,
	ErrInvalidCode:         protocol.ReasonTOTPInvalid,
	ErrNotEnrolled:         protocol.ReasonTOTPEnrollmentRequired,
	ErrEnrollmentRequired:  protocol.ReasonTOTPEnrollmentRequired,
	ErrNoPendingEnrollment: protocol.ReasonTOTPEnrollmentRequired,
	ErrCodeRequired:        protocol.ReasonTOTPRequired,
	ErrInvalidUser:         protocol.ReasonBadRequest,
}

// refuse builds the refusal for sentinel; format may wrap further errors with %w.
func refuse(sentinel error, format string, args ...any) error {
	r, ok := reasons[sentinel]
	if !ok {
		r = protocol.ReasonInternal
	}
	return &protocol.Refusal{Reason: r, Err: fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))}
}

// Service is the 2FA state of every user. It is safe for concurrent use.
type Service struct {
	kv      kv.Store
	aead    cipher.AEAD
	policy  Policy
	actions map[string]bool // actions that need a second factor
	clock   clock.Clock
	audit   Auditor
	txAudit TxAuditor // non-nil when audit is one

	// Step-up elevations live in the store (bucketStepUp), so that every gateway replica
	// sharing it sees them; lastSweep is when this replica last deleted expired ones.
	mu        sync.Mutex
	lastSweep time.Time
}

// New opens the 2FA state in kvs (the gateway store's, see store.Store.KV), with key (32 bytes, see
// LoadOrCreateKey and ParseKey) sealing the TOTP secrets, on clk (nil: the real clock);
// audit receives every 2FA event (nil: discarded). The first New on a database records a
// check value sealed with key; a later New with another key fails instead of silently failing
// every user's verification.
func New(kvs kv.Store, key []byte, policy Policy, clk clock.Clock, audit Auditor) (*Service, error) {
	if err := policy.Validate(); err != nil {
		return nil, fmt.Errorf("2fa policy: %w", err)
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	if audit == nil {
		audit = discardAuditor{}
	}
	s := &Service{
		kv:      kvs,
		aead:    aead,
		policy:  policy.clone(),
		actions: make(map[string]bool, len(policy.Actions)),
		clock:   clock.Or(clk),
		audit:   audit,
	}
	s.txAudit, _ = audit.(TxAuditor)
	for _, a := range policy.Actions {
		s.actions[a] = true
	}
	check, err := seal(aead, keyCheckUser, []byte(keyCheckPlain))
	if err != nil {
		return nil, err
	}
	err = kvs.Update(context.Background(), func(tx kv.Tx) error {
		v, err := tx.Get(bucketMeta, keySchema)
		if err != nil {
			return err
		}
		if v != nil && string(v) != fmt.Sprint(recordVersion) {
			return fmt.Errorf("2fa schema %q, this build reads %d", v, recordVersion)
		}
		if v == nil {
			if err := tx.Put(bucketMeta, keySchema, []byte(fmt.Sprint(recordVersion))); err != nil {
				return err
			}
		}
		v, err = tx.Get(bucketMeta, keyKeyCheck)
		if err != nil {
			return err
		}
		if v != nil {
			if plain, err := unseal(aead, keyCheckUser, v); err != nil || string(plain) != keyCheckPlain {
				return fmt.Errorf("%w: it is not the key this database's TOTP secrets were sealed with", ErrBadKey)
			}
			return nil
		}
		return tx.Put(bucketMeta, keyKeyCheck, check)
	})
	if err != nil {
		return nil, fmt.Errorf("open 2fa store: %w", err)
	}
	return s, nil
}

// The key check value: sealed for a name no user can have.
const (
	keyCheckUser  = "\x00key-check"
	keyCheckPlain = "telematics twofa key check"
)

// Policy returns the policy the service was built with.
func (s *Service) Policy() Policy { return s.policy.clone() }

// op is what one write transaction decided. An Update function may run more than once, so
// each run starts from a fresh op, and its events are reported only after the commit (or
// written inside the transaction by a TxAuditor).
type op struct {
	user, clientID string
	action         string // for Decide's events
	now            time.Time

	events  []Event
	refusal error  // decided inside the transaction; the transaction still commits
	step    int64  // the TOTP step accepted
	factor  string // the factor accepted
	left    int    // recovery codes left after one was spent
}

func (o *op) event(kind EventKind, factor string, reason protocol.Reason, step int64) {
	o.events = append(o.events, Event{
		Time: o.now, User: o.user, ClientID: o.clientID, Action: o.action,
		Kind: kind, Factor: factor, Reason: reason, Step: step,
	})
}

// write runs fn in a write transaction of the store. fn may run more than once: it reads
// everything it decides on from tx and records its decision in the op it is given. A refusal is not a
// transaction error: the failures it counts must commit.
func (s *Service) write(user, clientID string, now time.Time, fn func(tx kv.Tx, o *op) error) (*op, error) {
	return s.writeAction(user, clientID, "", now, fn)
}

// writeAction is write for a Decide about action.
func (s *Service) writeAction(user, clientID, action string, now time.Time, fn func(tx kv.Tx, o *op) error) (*op, error) {
	var o *op
	err := s.kv.Update(context.Background(), func(tx kv.Tx) error {
		o = &op{user: user, clientID: clientID, action: action, now: now}
		if err := fn(tx, o); err != nil {
			return err
		}
		if s.txAudit != nil {
			for _, e := range o.events {
				if err := s.txAudit.AuditTx(tx, e); err != nil {
					return fmt.Errorf("audit 2fa event: %w", err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("2fa store, user %q: %w", user, err)
	}
	if s.txAudit == nil {
		for _, e := range o.events {
			s.audit.Audit(e)
		}
	}
	return o, nil
}

func checkUser(user string) error {
	if !protocol.ValidUser(user) && !validOperatorSubject(user) {
		return refuse(ErrInvalidUser, "%q", truncate(user))
	}
	return nil
}

// operatorSuffix ends the name under which a console operator's 2FA state is kept
// (OperatorSubject). No user name holds '@', so an operator's enrollment and lockout never
// meet those of a user of the same name.
const operatorSuffix = "@console"

var operatorSubjectRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}@console$`)

// OperatorSubject is the name the service keeps console operator name's 2FA state under: pass
// it wherever a user name is asked for.
func OperatorSubject(name string) string { return name + operatorSuffix }

func validOperatorSubject(s string) bool { return operatorSubjectRE.MatchString(s) }

// cleanCode removes the spaces users type or paste around and inside codes ("123 456").
func cleanCode(code string) string {
	return strings.ReplaceAll(strings.TrimSpace(code), " ", "")
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
