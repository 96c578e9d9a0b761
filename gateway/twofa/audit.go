package twofa

import (
	"time"

	"telematics/gateway/kv"
	"telematics/pkg/protocol"
)

// EventKind names a 2FA event in the audit log.
type EventKind string

// The 2FA events. Each is reported once, after (or, with a TxAuditor, inside) the
// transaction that made it true.
const (
	EventEnroll         EventKind = "enroll"          // a pending secret was issued
	EventConfirm        EventKind = "confirm"         // a pending secret became active; new recovery codes
	EventSuccess        EventKind = "success"         // a TOTP code was accepted
	EventRecoveryUsed   EventKind = "recovery_used"   // a recovery code was accepted (and spent)
	EventFailure        EventKind = "failure"         // a wrong code or password; Reason says which refusal followed
	EventReplay         EventKind = "replay"          // a code of an already used step
	EventLockout        EventKind = "lockout"         // this failure started a lockout
	EventLockedRefusal  EventKind = "locked_refusal"  // an attempt refused, unchecked, during a lockout
	EventDisable        EventKind = "disable"         // the user removed their enrollment
	EventReset          EventKind = "reset"           // an administrator removed the enrollment
	EventLockoutCleared EventKind = "lockout_cleared" // an administrator cleared failures and lockout
)

// Factors: what a user presented. The gateway adds its own "key" (the phone's signature) when
// it builds a grant.
const (
	FactorTOTP     = "totp"
	FactorRecovery = "recovery"
	FactorStepUp   = "step_up" // a TOTP or recovery code accepted earlier in the same session
	FactorPassword = "password"
)

// Event is one 2FA audit record. It never holds a code, a recovery code or a secret.
type Event struct {
	Time     time.Time
	User     string
	ClientID string // the app session (MQTT client id), the HTTP caller, or the admin; may be empty
	Kind     EventKind
	Action   string          // the action Decide was asked about, if any
	Factor   string          // FactorTOTP, FactorRecovery, FactorPassword, or empty
	Reason   protocol.Reason // the refusal the caller got, if any
	Step     int64           // the TOTP time step accepted or replayed, if any (unix seconds / 30)
}

// Auditor receives 2FA events. Audit is called after the transaction commits, on the
// caller's goroutine: keep it quick.
type Auditor interface {
	Audit(Event)
}

// TxAuditor is an Auditor that can also write an event inside the service's transaction, so
// that a lockout and its audit record commit together or not at all. When the auditor passed
// to New implements it, AuditTx is used instead of Audit for every event. The transaction
// may be run more than once (kv.Store.Update): AuditTx must only write through tx.
type TxAuditor interface {
	Auditor
	AuditTx(tx kv.Tx, e Event) error
}

// AuditFunc adapts a function to Auditor.
type AuditFunc func(Event)

// Audit calls f(e).
func (f AuditFunc) Audit(e Event) { f(e) }

type discardAuditor struct{}

func (discardAuditor) Audit(Event) {}
