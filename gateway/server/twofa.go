package server

import (
	"fmt"
	"os"
	"path/filepath"

	"telematics/gateway/twofa"
	"telematics/pkg/protocol"
)

// TOTPKeyFile is the default file of the key that seals TOTP secrets.
const TOTPKeyFile = "totp.key"

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
	return twofa.New(g.store.KV(), key, g.cfg.TwoFA, g.clock, twofa.AuditLog{Log: g.audit})
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

// keyChangeFactor is the 2FA rule for key changes (twofa.Service.RequireForKeyChange) as the
// key registry's second factor.
type keyChangeFactor struct{ *twofa.Service }
