package commands

import (
	"context"
	"errors"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/pkg/protocol"
)

// TxSecondFactor is a SecondFactor that decides a request without a code inside a store
// transaction. A replica then reads the user, the enrollment, the lockout and the step-up in
// the transaction that records its decision, so a change another replica commits meanwhile
// makes the decision run again instead of resting on what it read before.
type TxSecondFactor interface {
	AuthorizeTx(tx kv.Tx, user, session string, action protocol.Action) (factors []string, err error)
}

// txKeys is a Keys that reads a car's whitelist inside a store transaction (keys.Service).
type txKeys interface {
	WhitelistTx(tx kv.Tx, vin string) (*protocol.Whitelist, error)
}

// errWaitTurn is the decision transaction's answer when the car has a command in flight: the
// request takes a turn of its own and waits for it (order.go).
var errWaitTurn = errors.New("the car has a command in flight")

// decideReplica decides a request on a replica of a cluster, whose state is in etcd, where
// every read and every commit is a round trip. The checks that read the store (judge), the
// car's turn and the record of the decision run in one Update: its reads are compared when it
// commits, so a key change, a lockout or another replica's decision of the same id committed
// meanwhile makes it run again on what is current. A lone request costs that one commit
// before its command goes out (and the turn's release after); a request that finds the car
// busy takes a turn and waits for it first (order.go); one that carries a code has it
// verified by the second factor's own transactions first.
func (r *Router) decideReplica(req request, ev audit.Event, cmd protocol.Command) {
	if !r.remember(cmd.ID, cmd.ExpiresAtMs) {
		r.refuse(req, ev, cmd, protocol.Refuse(protocol.ReasonDuplicate, "command id seen before"), false)
		return
	}
	var (
		turn        *carTurn // the car's turn this request holds; given back once it is decided
		codeFactors []string
		rate        rateOnce
		session     string // the step-up session, once judge got to the second factor
		out         []byte
	)
	defer func() {
		if turn != nil {
			r.releaseTurn(cmd.VIN, turn)
		}
	}()
	for {
		var taken *carTurn
		err := r.store.Update(context.Background(), func(tx kv.Tx) error {
			taken = nil
			if turn == nil {
				live, err := r.firstLiveTurnTx(tx, cmd.VIN, r.clock.Now().UnixMilli())
				if err != nil {
					return err
				}
				if live != nil {
					return errWaitTurn
				}
			}
			factors, sess, err := r.judge(tx, req, &cmd, codeFactors, &rate)
			session = sess
			if err != nil {
				return err
			}
			if out, err = r.vehicleCommand(req, cmd, factors); err != nil {
				return err
			}
			if hook := r.duringDecision.Load(); hook != nil {
				(*hook)(cmd.ID)
			}
			accepted := ev
			accepted.Outcome = protocol.ReplyAccepted
			accepted.Detail = "factors=" + joinFactors(factors)
			if err := r.recordDecisionTx(tx, accepted, cmd.ID, cmd.ExpiresAtMs, true); err != nil {
				return err
			}
			if turn == nil {
				taken, err = r.takeTurnTx(tx, cmd.VIN, cmd.ID, cmd.ExpiresAtMs)
			}
			return err
		})
		if taken != nil {
			turn = taken
		}
		switch {
		case err == nil:
			r.send(req, cmd, out)
			return
		case errors.Is(err, errWaitTurn):
			// The cluster accepts the request here and decides it after the car's earlier
			// ones; the turn is given back once it is refused or handed to the broker.
			if turn, err = r.takeTurn(cmd.VIN, cmd.ID, cmd.ExpiresAtMs); err == nil {
				err = r.waitTurn(cmd.VIN, turn, cmd.ExpiresAtMs)
			}
			if errors.Is(err, errTurnLost) {
				err = protocol.Refuse(protocol.ReasonExpired, "expired while the car's earlier commands were decided")
			}
			if err != nil {
				r.refuse(req, ev, cmd, err, false)
				return
			}
		case errors.Is(err, errVerifyCode):
			if codeFactors, err = r.twofa.Authorize(req.user, session, cmd.Action, req.app.ar.TOTP); err != nil {
				r.refuse(req, ev, cmd, err, true)
				return
			}
			if codeFactors == nil {
				codeFactors = []string{}
			}
		case errors.Is(err, errDecidedElsewhere):
			// Another replica sharing the store decided this id first (its seen map is not
			// ours).
			if req.redelivered {
				// It answers it (redelivery.go), unless it recorded a refusal and died before
				// sending it.
				r.sendRecordedRefusal(cmd.ID, "redelivered")
				return
			}
			r.refuse(req, ev, cmd, protocol.Refuse(protocol.ReasonDuplicate, "command id seen before"), false)
			return
		case protocol.ReasonOf(err) != protocol.ReasonInternal:
			r.refuse(req, ev, cmd, err, true)
			return
		default:
			// The store failed (etcd unreachable, say): nothing was recorded, so a retry of
			// the same id is decided afresh. refuse logs the cause.
			r.forget(cmd.ID)
			r.refuse(req, ev, cmd, err, false)
			return
		}
	}
}
