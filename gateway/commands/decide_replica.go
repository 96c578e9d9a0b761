package commands

import (
	"context"
	"errors"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/gateway/store"
	"telematics/pkg/protocol"
)

// TxSecondFactor is a SecondFactor that decides a request without a code inside a store
// transaction. A replica then reads the user, the enrollment, the lockout and the step-up in
// the transaction that records its decision, so a change another replica commits meanwhile
// makes the decision run again instead of resting on what it read before.
//
// codeFactors are the factors a code the request carried gave when Authorize verified it, in
// transactions of its own, before the decision (nil: the request carried none): AuthorizeTx
// then checks in tx only what may have changed since (the user still active, not locked out)
// and returns them.
type TxSecondFactor interface {
	AuthorizeTx(tx kv.Tx, user, session string, action protocol.Action, codeFactors []string) (factors []string, err error)
}

// TxKeys is a Keys that reads a car's whitelist inside a store transaction (keys.Service).
type TxKeys interface {
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
	// notRecorded answers a refusal whose id is not recorded: nothing of the request is in the
	// store, so a retry of the same id is decided afresh.
	notRecorded := func(err error) {
		r.forget(cmd.ID)
		r.refuse(req, ev, cmd, err, false)
	}
	for {
		var (
			taken    *carTurn
			refused  error // a refusal recorded by the transaction
			complete bool  // the function ran to its end: its commit may have applied
		)
		err := r.store.Update(context.Background(), func(tx kv.Tx) error {
			taken, refused, complete = nil, nil, false
			// An id another replica decided is not judged again here: its answer is that
			// replica's (a redelivery, or the same id sent twice).
			if dup, err := store.CommandIDTaken(tx, cmd.ID, r.clock.Now().UnixMilli()); err != nil {
				return err
			} else if dup {
				return errDecidedElsewhere
			}
			live, err := r.firstLiveTurnTx(tx, cmd.VIN, r.clock.Now().UnixMilli())
			switch {
			case err != nil:
				return err
			case turn == nil && live != nil:
				return errWaitTurn
			case turn != nil && (live == nil || *live != *turn):
				return errNotYourTurn
			}
			factors, sess, err := r.judge(tx, req, &cmd, codeFactors, &rate)
			session = sess
			if err == nil {
				out, err = r.vehicleCommand(req, cmd, factors)
			}
			if err != nil {
				if errors.Is(err, errVerifyCode) || protocol.ReasonOf(err) == protocol.ReasonInternal {
					return err
				}
				// A refusal: recorded with the id in this transaction, sent once claimed.
				refused = err
				if err := r.recordDecisionTx(tx, rejectedEvent(ev, err), cmd.ID, cmd.ExpiresAtMs, false); err != nil {
					return err
				}
				complete = true
				return nil
			}
			if hook := r.duringDecision.Load(); hook != nil {
				(*hook)(cmd.ID)
			}
			accepted := ev
			accepted.Outcome = protocol.ReplyAccepted
			accepted.Detail = "factors=" + joinFactors(factors)
			if err := r.recordDecisionTx(tx, accepted, cmd.ID, cmd.ExpiresAtMs, false); err != nil {
				return err
			}
			if turn == nil {
				if taken, err = r.takeTurnTx(tx, cmd.VIN, cmd.ID, cmd.ExpiresAtMs); err != nil {
					return err
				}
			}
			complete = true
			return nil
		})
		if taken != nil && (err == nil || complete) {
			// Taken, or maybe taken by a commit whose answer was lost: given back either way
			// (a give-back of a turn that is not there changes nothing).
			turn = taken
		}
		switch {
		case err == nil && refused != nil:
			r.noteRefusal(req, ev, refused)
			r.sendRefusalRecordedHere(cmd.ID)
			return
		case err == nil:
			r.send(req, cmd, out)
			return
		case errors.Is(err, errWaitTurn):
			// The cluster accepts the request here and decides it after the car's earlier
			// ones; the turn is given back once it is refused or handed to the broker.
			if turn, err = r.takeTurn(cmd.VIN, cmd.ID, cmd.ExpiresAtMs); err == nil {
				err = r.waitTurn(cmd.VIN, turn, cmd.ExpiresAtMs)
			}
			if err != nil {
				notRecorded(err)
				return
			}
		case errors.Is(err, errNotYourTurn):
			// waitTurn read a copy that was behind: wait on (a poll's time first, so that a
			// copy that stays behind costs a transaction a poll, not a tight loop).
			time.Sleep(turnPollInterval)
			if err := r.waitTurn(cmd.VIN, turn, cmd.ExpiresAtMs); err != nil {
				notRecorded(err)
				return
			}
		case errors.Is(err, errVerifyCode):
			codeFactors, err = r.twofa.Authorize(req.user, session, cmd.Action, req.app.ar.TOTP)
			if err != nil && protocol.ReasonOf(err) == protocol.ReasonInternal {
				notRecorded(err)
				return
			}
			if err != nil {
				r.refuseRecorded(req, ev, cmd, err)
				return
			}
			if codeFactors == nil {
				codeFactors = []string{}
			}
		case errors.Is(err, errDecidedElsewhere):
			r.decidedElsewhere(req, ev, cmd)
			return
		case complete && errors.Is(err, kv.ErrUnavailable):
			r.settleUnconfirmed(req, ev, cmd, refused, err)
			return
		default:
			// The store failed (etcd unreachable, say) before anything could commit.
			notRecorded(err)
			return
		}
	}
}

// refuseRecorded refuses a request whose id is recorded with the refusal, unless another
// replica decided the id first (then that replica's answer stands).
func (r *Router) refuseRecorded(req request, ev audit.Event, cmd protocol.Command, err error) {
	rerr := r.recordDecision(rejectedEvent(ev, err), cmd.ID, cmd.ExpiresAtMs, true)
	switch {
	case errors.Is(rerr, errDecidedElsewhere):
		r.decidedElsewhere(req, ev, cmd)
	case rerr != nil:
		r.log.Error("audit write failed", "cmd_id", cmd.ID, "err", rerr)
		r.forget(cmd.ID)
		r.refuse(req, ev, cmd, err, false)
	default:
		r.noteRefusal(req, ev, err)
		r.sendRefusalRecordedHere(cmd.ID)
	}
}

// decidedElsewhere answers a request whose id another replica sharing the store decided first
// (its seen map is not ours).
func (r *Router) decidedElsewhere(req request, ev audit.Event, cmd protocol.Command) {
	if req.redelivered {
		// That replica answers it (redelivery.go), unless it recorded a refusal and died
		// before sending it.
		r.sendRecordedRefusal(cmd.ID, "redelivered")
		return
	}
	r.refuse(req, ev, cmd, protocol.Refuse(protocol.ReasonDuplicate, "command id seen before"), false)
}

// settleUnconfirmed answers a decision whose commit etcd did not confirm (kv.ErrUnavailable
// after the function ran to its end: the commit may have applied). Its record, if any, settles
// it: an accepted decision's pending record is claimed and answered failed (the command was
// not sent); a refusal's record is sent; with neither, nothing was committed and the request
// is refused internal. While the store stays unreachable the request is answered internal
// and its id kept: should the commit have applied, the sweep answers the command expired
// later, a second answer this replica cannot rule out (logged).
func (r *Router) settleUnconfirmed(req request, ev audit.Event, cmd protocol.Command, refused, cause error) {
	if refused != nil {
		if r.sendRecordedRefusal(cmd.ID, "unconfirmed commit") {
			r.noteRefusal(req, ev, refused)
			return
		}
	} else {
		res := audit.Event{TsMs: r.clock.Now().UnixMilli(), Kind: audit.KindResult, VIN: cmd.VIN, CmdID: cmd.ID,
			Outcome: protocol.ReplyFailed, Reason: string(protocol.ReasonInternal), Detail: "decision not confirmed by the store; not sent"}
		_, claimed, err := r.claim(cmd.ID, res)
		if err == nil && claimed {
			r.log.Error("decision not confirmed by the store; answered failed, not sent", "cmd_id", cmd.ID, "vin", cmd.VIN, "err", cause)
			r.reply(req.user, protocol.Reply{ID: cmd.ID, Status: protocol.ReplyFailed, Reason: protocol.ReasonInternal, VIN: cmd.VIN, Action: cmd.Action})
			return
		}
		if err != nil {
			r.log.Error("decision not confirmed by the store, which stays unreachable: answered internal; if it was committed the sweep answers expired later",
				"cmd_id", cmd.ID, "vin", cmd.VIN, "err", err)
			r.refuse(req, ev, cmd, cause, false)
			return
		}
	}
	r.forget(cmd.ID)
	r.refuse(req, ev, cmd, cause, false)
}
