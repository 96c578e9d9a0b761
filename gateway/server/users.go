package server

import (
	"errors"

	"telematics/gateway/commands"
	"telematics/gateway/httpapi"
	"telematics/gateway/keys"
	"telematics/gateway/kv"
	"telematics/gateway/store"
	"telematics/pkg/protocol"
)

// activeUsers refuses the commands of a user who was disabled or deleted before it asks the
// second factor: an app session opened before (on a broker that runs apart from the gateway,
// which does not know the user's tokens were ended) gets nothing done.
type activeUsers struct {
	st   *store.Store
	next secondFactor
}

func (a activeUsers) Authorize(user, session string, action protocol.Action, code string) ([]string, error) {
	u, err := a.st.GetUser(user)
	if err != nil {
		return nil, protocol.Refuse(protocol.ReasonUnauthenticated, "this account no longer exists")
	}
	if u.Disabled {
		return nil, protocol.Refuse(protocol.ReasonUnauthenticated, "this account is disabled; ask the administrator")
	}
	return a.next.Authorize(user, session, action, code)
}

// appTokenEnded reports whether an app identity's token was ended: its user deleted or
// disabled, or its generation replaced by a password change.
func (g *Gateway) appTokenEnded(sub string, gen uint64) bool {
	return httpapi.CheckAppToken(g.store, sub, gen) != nil
}

// userTokensEnded closes the embedded broker's sessions of user.
func (g *Gateway) userTokensEnded(user string) {
	if g.broker != nil {
		g.broker.DropUser(user)
	}
}

// AuthorizeTx is Authorize inside tx (commands.TxSecondFactor): a replica reads the user and
// the 2FA state in the transaction that records its decision. For a request whose code
// Authorize verified (codeFactors), it checks what may have changed since: the user still
// active and not locked out.
func (a activeUsers) AuthorizeTx(tx kv.Tx, user, session string, action protocol.Action, codeFactors []string) ([]string, error) {
	u, err := store.GetUserTx(tx, user)
	if errors.Is(err, store.ErrNotFound) {
		return nil, protocol.Refuse(protocol.ReasonUnauthenticated, "this account no longer exists")
	}
	if err != nil {
		return nil, err
	}
	if u.Disabled {
		return nil, protocol.Refuse(protocol.ReasonUnauthenticated, "this account is disabled; ask the administrator")
	}
	if codeFactors != nil {
		return codeFactors, a.next.svc.LockoutTx(tx, user)
	}
	d, err := a.next.svc.DecideTx(tx, user, session, string(action))
	if err != nil {
		return nil, err
	}
	return d.Factors, nil
}

var _ commands.TxSecondFactor = activeUsers{}

var _ commands.TxKeys = (*keys.Service)(nil)
