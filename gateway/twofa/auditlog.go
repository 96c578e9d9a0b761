package twofa

import (
	"fmt"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
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
func (a AuditLog) AuditTx(tx kv.Tx, e Event) error { return a.Log.AppendTx(tx, auditEvent(e)) }
