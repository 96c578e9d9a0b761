package server

import (
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/audit"
	"telematics/gateway/twofa"
	"telematics/pkg/protocol"
)

// TOTPKeyFile is the default file of the key that seals TOTP secrets.
const TOTPKeyFile = "totp.key"

// twofaAuditor writes 2FA events into the audit log, inside the 2FA transaction where it can.
type twofaAuditor struct{ log *audit.Log }

func twofaEvent(e twofa.Event) audit.Event {
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

func (a twofaAuditor) Audit(e twofa.Event) { _ = a.log.Append(twofaEvent(e)) }

func (a twofaAuditor) AuditTx(tx *bolt.Tx, e twofa.Event) error {
	return audit.AppendTx(tx, twofaEvent(e))
}

func (g *Gateway) openTwoFA() (*twofa.Service, error) {
	var key []byte
	var err error
	if k := os.Getenv("GATEWAY_TWOFA_KEY"); k != "" {
		key, err = twofa.ParseKey(k)
	} else {
		path := g.cfg.TwoFAKeyFile
		if path == "" {
			path = filepath.Join(g.cfg.Data, TOTPKeyFile)
		}
		key, err = twofa.LoadOrCreateKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("TOTP sealing key: %w", err)
	}
	svc, err := twofa.New(g.store.DB(), key, g.cfg.TwoFA, g.clock, twofaAuditor{g.audit})
	if err != nil {
		return nil, err
	}
	svc.SetWriter(g.store.Write)
	return svc, nil
}

// secondFactor adapts the 2FA service to the command router.
type secondFactor struct{ svc *twofa.Service }

func (s secondFactor) Authorize(user, session string, action protocol.Action, code string) ([]string, error) {
	d, err := s.svc.Decide(user, session, string(action), code)
	if err != nil {
		return nil, err
	}
	return d.Factors, nil
}

// keyChangeFactor is the 2FA rule for key changes: unless 2FA is off altogether, they need an
// enrolled user and a code (or a session a code elevated).
type keyChangeFactor struct{ svc *twofa.Service }

func (k keyChangeFactor) RequireForKeyChange(user, session, action, code string) error {
	if k.svc.Policy().Mode == twofa.ModeOff {
		return nil
	}
	enrolled, err := k.svc.Enrolled(user)
	if err != nil {
		return err
	}
	if !enrolled {
		return protocol.Refuse(protocol.ReasonTOTPEnrollmentRequired, "key changes need two-factor authentication: enroll with `vehicle-sim app totp enroll`")
	}
	_, err = k.svc.Decide(user, session, action, code)
	return err
}
