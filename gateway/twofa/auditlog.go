package twofa

import (
	"fmt"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/audit"
)

// AuditLog is a TxAuditor that writes 2FA events into the gateway's audit log, inside the 2FA
// transaction where it can.
type AuditLog struct{ Log *audit.Log }

// auditEvent is e as an audit record; Detail names the factor and the TOTP step, never a code.
func auditEvent(e Event) audit.Event {
	detail := ""
	if e.Factor != "" {
		detail = "factor=" + e.Factor
	}
	if e.Step != 0 {
		detail += fmt.Sprintf(" step=%d", e.Step)
	}
	return audit.Event{TsMs: e.Time.UnixMilli(), Kind: audit.KindTwoFactor, User: e.User, ClientID: e.ClientID,
		Action: e.Action, Outcome: string(e.Kind), Reason: string(e.Reason), Detail: detail}
}

// Audit appends e after the 2FA transaction.
func (a AuditLog) Audit(e Event) { _ = a.Log.Append(auditEvent(e)) }

// AuditTx appends e inside tx.
func (a AuditLog) AuditTx(tx *bolt.Tx, e Event) error { return audit.AppendTx(tx, auditEvent(e)) }
