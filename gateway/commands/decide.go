package commands

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/gateway/store"
	"telematics/pkg/protocol"
	"telematics/pkg/whitelist"
)

// stepUpKeySession is the 2FA step-up session of requests whose broker does not name the
// publishing client: the phone key that signed them.
func stepUpKeySession(keyID string) string { return "key:" + keyID }

// appRequest is an app's request as Submit decoded it: Submit shards it by the command's VIN
// and decide judges it, without decoding it again.
type appRequest struct {
	ar  protocol.AppRequest
	cmd protocol.Command // as far as it was decoded: its id is echoed even in a bad_request
	err error            // the first decoding error; nil when ar and cmd hold the request
}

// decodeAppRequest decodes an app's request and the command document it carries.
func decodeAppRequest(payload []byte) *appRequest {
	a := &appRequest{}
	a.err = protocol.Decode(payload, &a.ar)
	var doc []byte
	if a.err == nil {
		doc, a.err = a.ar.Command.DocBytes()
	}
	if a.err == nil {
		a.err = protocol.Decode(doc, &a.cmd)
	}
	return a
}

// decide runs the checks of PROTOCOL.md's lifecycle in order and answers with the first reason
// that applies; an accepted command is audited, sent to the car and awaited.
func (r *Router) decide(req request) {
	nowMs := r.clock.Now().UnixMilli()
	ev := audit.Event{TsMs: nowMs, Kind: audit.KindCommand, User: req.user, ClientID: req.session, ReceivedMs: req.receivedMs}

	ar, cmd, err := &req.app.ar, req.app.cmd, req.app.err
	if err == nil {
		err = cmd.Check()
	}
	// The id is echoed whenever there is one, so the app can match even a bad_request.
	ev.CmdID, ev.VIN, ev.Action = cmd.ID, cmd.VIN, string(cmd.Action)
	if !protocol.ValidID(cmd.ID) {
		ev.CmdID = ""
	}
	if r.redeliveredAndDecided(req, cmd.ID) {
		return // another replica decided it and answers it (redelivery.go)
	}
	// A user whose refusals used up their budget is answered rate_limited before anything
	// else is looked at, written or remembered: a flood of bad requests costs the gateway a
	// decode and a reply each, and one audit record a second per user (throttled.go).
	if !r.refusals.available(req.user, r.clock.Now()) {
		r.throttle(req, ev)
		return
	}
	// Everything that can be judged from the request alone is judged before its id is
	// remembered: only a well-formed, signed-looking command that expires within
	// MaxCommandAheadMs costs a remembered id, and then for at most twice that long.
	if err == nil {
		err = checkExpiry(&cmd, nowMs)
	}
	if err == nil {
		err = ar.Command.CheckSignatureShape()
	}
	if err != nil {
		r.refuse(req, ev, cmd, err, false)
		return
	}
	if cmd.User != "" && cmd.User != req.user {
		r.refuse(req, ev, cmd, protocol.Refuse(protocol.ReasonForbidden, "command names user %q, sent by %q", cmd.User, req.user), true)
		return
	}
	if r.clustered() {
		r.decideReplica(req, ev, cmd)
		return
	}
	if !r.remember(cmd.ID, cmd.ExpiresAtMs) {
		r.refuse(req, ev, cmd, protocol.Refuse(protocol.ReasonDuplicate, "command id seen before"), false)
		return
	}
	var rate rateOnce
	factors, _, err := r.judge(nil, req, &cmd, nil, &rate)
	var out []byte
	if err == nil {
		out, err = r.vehicleCommand(req, cmd, factors)
	}
	if err != nil {
		r.refuse(req, ev, cmd, err, true)
		return
	}
	// The decision is durable before the command goes out.
	ev.Outcome = protocol.ReplyAccepted
	ev.Detail = "factors=" + joinFactors(factors)
	err = r.recordDecision(ev, cmd.ID, cmd.ExpiresAtMs, true)
	if errors.Is(err, errDecidedElsewhere) {
		ev.Detail = ""
		r.refuse(req, ev, cmd, protocol.Refuse(protocol.ReasonDuplicate, "command id seen before"), false)
		return
	}
	if err != nil {
		r.log.Error("audit write failed; command not sent", "cmd_id", cmd.ID, "vin", cmd.VIN, "err", err)
		r.forget(cmd.ID)
		r.reply(req.user, protocol.Reply{ID: cmd.ID, Status: protocol.ReplyFailed, Reason: protocol.ReasonInternal, VIN: cmd.VIN, Action: cmd.Action})
		return
	}
	r.send(req, cmd, out)
}

// rateOnce is a request's answer from the rate limiter, asked once however often the
// decision's transaction runs.
type rateOnce struct{ asked, allowed bool }

// errVerifyCode is judge's answer, inside a replica's decision transaction, for a request
// that carries a code: verifying it writes (the code's time step, the failures that lead to a
// lockout) whatever the decision, so it is done by Authorize outside the transaction, which
// then runs again with the factors the code gave.
var errVerifyCode = errors.New("the request's code is verified outside the decision")

// judge runs the checks of the lifecycle that read the store, in order: the vehicle is known;
// the command carries the signature of an active key of the requester whose role allows the
// action (the rule the car applies to its own whitelist); the second factor; the requester's
// rate; the car online. It returns the factors for the grant or the refusal. tx nil: each
// read is its own (one gateway, whose reads are local); a replica passes the transaction that
// records its decision, so that what the decision rests on is compared when it commits.
// codeFactors are the factors of the request's code once Authorize verified it (replicas).
// session is the step-up session the second factor is asked about, once judge got that far.
func (r *Router) judge(tx kv.Tx, req request, cmd *protocol.Command, codeFactors []string, rate *rateOnce) (factors []string, session string, err error) {
	if err := r.checkVehicle(tx, cmd.VIN); err != nil {
		return nil, "", err
	}
	var wl *protocol.Whitelist
	if k, ok := r.keys.(TxKeys); ok && tx != nil {
		if wl, err = k.WhitelistTx(tx, cmd.VIN); err != nil {
			return nil, "", err
		}
	} else {
		wl = r.keys.Whitelist(cmd.VIN)
	}
	ar := &req.app.ar
	_, key, err := whitelist.VerifyCommand(wl, ar.Command, protocol.ChannelCloud, r.clock.Now())
	if err == nil && key.User != req.user {
		err = protocol.Refuse(protocol.ReasonForbidden, "key %s belongs to another user", key.ID)
	}
	if err != nil {
		return nil, "", err
	}
	factors = []string{"token", "key"}
	if r.twofa != nil {
		session = req.session
		if session == "" {
			// A broker that does not say which client published (any broker but the embedded
			// one): the step-up is bound to the phone key whose signature was just verified,
			// that is to the device, whose private key never leaves it. Another device of the
			// same user, with a stolen password or not, has another key and no step-up.
			session = stepUpKeySession(key.ID)
		}
		var f []string
		switch tf, inTx := r.twofa.(TxSecondFactor); {
		case tx != nil && ar.TOTP != "" && codeFactors == nil:
			return nil, session, errVerifyCode
		case tx != nil && inTx:
			f, err = tf.AuthorizeTx(tx, req.user, session, cmd.Action, codeFactors)
		case codeFactors != nil:
			f = codeFactors
		default:
			f, err = r.twofa.Authorize(req.user, session, cmd.Action, ar.TOTP)
		}
		if err != nil {
			return nil, session, err
		}
		factors = append(factors, f...)
	}
	if !rate.asked {
		rate.asked, rate.allowed = true, r.rate.allow(req.user, r.clock.Now())
	}
	if !rate.allowed {
		return nil, session, protocol.Refuse(protocol.ReasonRateLimited, "over %v requests per minute", r.cfg.RatePerMinute)
	}
	if !r.twins.online(cmd.VIN) {
		return nil, session, protocol.Refuse(protocol.ReasonVehicleOffline, "car is offline")
	}
	return factors, session, nil
}

// vehicleCommand is the command as it goes to the car: the app's signed document and the
// gateway's grant naming the factors that authorized it.
func (r *Router) vehicleCommand(req request, cmd protocol.Command, factors []string) ([]byte, error) {
	ar := &req.app.ar
	sum, _ := ar.Command.DocSHA256()
	grant, err := r.keys.GrantSigner(cmd.VIN).Seal(protocol.Grant{V: protocol.Version, CmdSHA256: sum, VIN: cmd.VIN,
		User: req.user, Factors: factors, ExpiresAtMs: cmd.ExpiresAtMs})
	if err != nil {
		return nil, err
	}
	return json.Marshal(protocol.VehicleCommand{V: protocol.Version, Command: ar.Command, Grant: grant})
}

// send answers an accepted command, whose decision is durable, and hands it to the broker.
func (r *Router) send(req request, cmd protocol.Command, out []byte) {
	// The publish may take until the command expires, by the router's clock: how long that is
	// is read once, here, so that the check and the publish's bound agree.
	wait := r.clock.Until(time.UnixMilli(cmd.ExpiresAtMs))
	if wait <= 0 {
		// Deciding took longer than the command lives: never send a stale command.
		r.terminal(cmd.ID, req.user, cmd.VIN, cmd.Action, protocol.ReplyExpired, protocol.ReasonExpired, nil, 0, "expired before it could be sent")
		return
	}
	r.mu.Lock()
	r.pending[cmd.ID] = &pending{user: req.user, session: req.session, vin: cmd.VIN, action: cmd.Action, expiresAtMs: cmd.ExpiresAtMs}
	r.mu.Unlock()
	r.armSweep(cmd.ExpiresAtMs + r.cfg.ResultGrace.Milliseconds())
	r.reply(req.user, protocol.Reply{ID: cmd.ID, Status: protocol.ReplyAccepted, VIN: cmd.VIN, Action: cmd.Action})
	r.mu.Lock()
	if p := r.pending[cmd.ID]; p != nil {
		p.sentMs = r.clock.Now().UnixMilli() // the terminal audit record's "sent"
	}
	r.mu.Unlock()

	ctx, cancel := context.WithTimeout(r.ctx, wait)
	defer cancel()
	// A replica publishes at QoS 2: mochi acknowledges a QoS 1 publish before it queues the
	// message for the car, so after a QoS 1 Publish returned the next replica's command for
	// this car (decided once this one gives its turn back) could still reach the car first.
	// A QoS 2 publish completes after the broker read the client's PUBREL, that is after it
	// queued the command. One gateway publishes all of a car's commands on one connection,
	// in order.
	qos := byte(1)
	if r.clustered() {
		qos = 2
	}
	if err := r.bus.Publish(ctx, protocol.VehicleTopic(cmd.VIN, protocol.SuffixCmd), qos, false, out); err != nil {
		r.log.Warn("command not delivered to broker", "cmd_id", cmd.ID, "vin", cmd.VIN, "err", err)
		if r.clock.Now().UnixMilli() >= cmd.ExpiresAtMs {
			// It expired before the broker took it (a car refuses it after its expiry anyway).
			r.finish(cmd.ID, req.user, cmd.VIN, cmd.Action, protocol.ReplyExpired, protocol.ReasonExpired, nil, 0, "expired before the broker took it: "+err.Error())
			return
		}
		r.finish(cmd.ID, req.user, cmd.VIN, cmd.Action, protocol.ReplyFailed, protocol.ReasonInternal, nil, 0, "publish to car failed: "+err.Error())
	}
}

// checkExpiry refuses a command that has expired or that expires more than
// protocol.MaxCommandAheadMs after nowMs.
func checkExpiry(cmd *protocol.Command, nowMs int64) error {
	if cmd.ExpiresAtMs <= nowMs {
		return protocol.Refuse(protocol.ReasonExpired, "command expired before the gateway saw it")
	}
	if cmd.ExpiresAtMs > nowMs+protocol.MaxCommandAheadMs {
		return protocol.Refuse(protocol.ReasonBadRequest, "expires_at lies more than %d ms ahead", protocol.MaxCommandAheadMs)
	}
	return nil
}

// checkVehicle refuses a command for a car the gateway does not know, reading in tx (nil: a
// read of its own).
func (r *Router) checkVehicle(tx kv.Tx, vin string) error {
	var err error
	if tx != nil {
		_, err = store.GetVehicleTx(tx, vin)
	} else {
		_, err = r.store.GetVehicle(vin)
	}
	if errors.Is(err, store.ErrNotFound) {
		return protocol.Refuse(protocol.ReasonVehicleUnknown, "no vehicle %s", vin)
	}
	return err
}

// refuse audits and answers a rejected request. persistID records the id as used, so a
// replay of the same request is a duplicate even after a restart.
func (r *Router) refuse(req request, ev audit.Event, cmd protocol.Command, err error, persistID bool) {
	ev = r.noteRefusal(req, ev, err)
	var aerr error
	recorded := false
	if persistID && ev.CmdID != "" {
		aerr = r.recordDecision(ev, ev.CmdID, cmd.ExpiresAtMs, false)
		recorded = aerr == nil && r.clustered()
	} else {
		aerr = r.audit.Append(ev)
	}
	if aerr != nil {
		r.log.Error("audit write failed", "cmd_id", ev.CmdID, "err", aerr)
	}
	if recorded {
		r.sendRefusalRecordedHere(ev.CmdID)
		return
	}
	r.reply(req.user, protocol.Reply{ID: ev.CmdID, Status: protocol.ReplyRejected, Reason: protocol.Reason(ev.Reason), VIN: ev.VIN, Action: protocol.Action(ev.Action)})
}

// rejectedEvent is ev as the audit record of a refusal for err.
func rejectedEvent(ev audit.Event, err error) audit.Event {
	ev.Outcome = protocol.ReplyRejected
	ev.Reason = string(protocol.ReasonOf(err))
	return ev
}

// noteRefusal counts a refusal against the user's budget of refused requests, logs it, and
// returns ev as its audit record.
func (r *Router) noteRefusal(req request, ev audit.Event, err error) audit.Event {
	r.refusals.allow(req.user, r.clock.Now())
	ev = rejectedEvent(ev, err)
	if ev.Reason == string(protocol.ReasonInternal) {
		r.log.Error("request failed", "user", req.user, "cmd_id", ev.CmdID, "err", err)
	} else {
		r.log.Debug("request rejected", "user", req.user, "cmd_id", ev.CmdID, "vin", ev.VIN, "reason", ev.Reason)
	}
	return ev
}

// sendRefusalRecordedHere sends the refusal this replica recorded with the decision: it goes
// out once, from whichever replica claims it (refusal.go).
func (r *Router) sendRefusalRecordedHere(id string) {
	if hook := r.afterRefusalRecorded.Load(); hook != nil && (*hook)(id) {
		return
	}
	r.sendRecordedRefusal(id, "refused here")
}

// errDecidedElsewhere is recordDecision's answer when the id is in the store already,
// remembered by another gateway replica that decided it first.
var errDecidedElsewhere = errors.New("command id decided by another replica")

// recordDecision remembers id and audits ev in one transaction. first is set for an accepted
// command: the id must not be remembered yet (as it is by another replica that took it at the
// same moment), and the transaction fails with errDecidedElsewhere if it is. Across replicas
// this, not the per-replica seen map, is what decides an id once.
func (r *Router) recordDecision(ev audit.Event, id string, untilMs int64, first bool) error {
	return r.store.Update(context.Background(), func(tx kv.Tx) error { return r.recordDecisionTx(tx, ev, id, untilMs, first) })
}

// recordDecisionTx is recordDecision inside tx.
func (r *Router) recordDecisionTx(tx kv.Tx, ev audit.Event, id string, untilMs int64, first bool) error {
	// Ids are remembered past their command's expiry by the car's replay horizon, so no
	// replay of a still-valid command can pass.
	until := untilMs + protocol.MaxCommandAheadMs
	if first {
		taken, err := store.CommandIDTaken(tx, id, r.clock.Now().UnixMilli())
		if err != nil {
			return err
		}
		if taken {
			return errDecidedElsewhere
		}
	}
	if err := store.PutCommandID(tx, id, until); err != nil {
		return err
	}
	if err := r.putPendingTx(tx, ev, untilMs); err != nil { // a replica's (replica.go)
		return err
	}
	return r.audit.AppendTx(tx, ev)
}

// remember marks id as seen; false if it was seen already.
func (r *Router) remember(id string, expiresAtMs int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.seen[id]; dup {
		return false
	}
	r.seen[id] = expiresAtMs + protocol.MaxCommandAheadMs
	return true
}

func (r *Router) forget(id string) {
	r.mu.Lock()
	delete(r.seen, id)
	r.mu.Unlock()
}

func joinFactors(f []string) string {
	out := ""
	for i, s := range f {
		if i > 0 {
			out += ","
		}
		out += s
	}
	return out
}
