package commands

import (
	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"time"
)

// pending is an accepted request that awaits its car's result.
type pending struct {
	user        string
	session     string
	vin         string
	action      protocol.Action
	expiresAtMs int64
	sentMs      int64 // when the command was handed to the broker (0: not yet)
}

// onResult relays a car's result to the app that asked, once.
func (r *Router) onResult(m mqttc.Message) {
	vin, suffix, ok := protocol.ParseVehicleTopic(m.Topic)
	if !ok || suffix != protocol.SuffixResult {
		return
	}
	var res protocol.Result
	if err := protocol.Decode(m.Payload, &res); err != nil || !protocol.ValidID(res.ID) {
		r.log.Warn("malformed result from car", "vin", vin, "err", err)
		return
	}
	status, reason, message := protocol.ReplyExecuted, protocol.ReasonNone, ""
	switch res.Status {
	case protocol.ResultExecuted:
	case protocol.ResultRejected:
		status, reason = protocol.ReplyRejected, res.Reason
		if !reason.Valid() {
			reason = protocol.ReasonInternal
		}
		if reason == protocol.ReasonForbidden {
			// The car's word on a refusal for its state ("the trunk cannot open while the
			// car moves") reaches the user, bounded and printable.
			message = protocol.CarMessage(res.Message)
		}
	default:
		status, reason = protocol.ReplyFailed, protocol.ReasonInternal
	}
	r.mu.Lock()
	p, ok := r.pending[res.ID]
	if ok && p.vin != vin {
		// A car can only answer its own commands.
		ok = false
	}
	r.mu.Unlock()
	switch {
	case ok:
		r.finishWithMessage(res.ID, p.user, vin, p.action, status, reason, res.State, res.TsMs, message)
	case r.clustered():
		// Another replica accepted the command: its pending record is in the store, and
		// claiming it tells whom to answer.
		r.relayClaimed(res, vin, status, reason, message)
	default:
		r.auditLate(res, vin)
	}
}

// relayClaimed answers a car's result for a command this replica did not accept, if it claims
// the command's pending record; a result for no pending command is audited as late.
func (r *Router) relayClaimed(res protocol.Result, vin, status string, reason protocol.Reason, message string) {
	detail := ""
	if message != "" {
		detail = "car: " + message
	}
	ev := audit.Event{TsMs: r.clock.Now().UnixMilli(), Kind: audit.KindResult, VIN: vin,
		CmdID: res.ID, Outcome: status, Reason: string(reason), Detail: detail, CarMs: res.TsMs}
	r.awaitCopy(bucketPending, []byte(res.ID))
	rec, claimed, err := r.claim(res.ID, ev)
	switch {
	case err != nil:
		r.log.Error("result not relayed: pending command not claimed; the sweep answers expired", "cmd_id", res.ID, "vin", vin, "err", err)
	case !claimed:
		r.auditLate(res, vin)
	default:
		r.reply(rec.User, protocol.Reply{ID: res.ID, Status: status, Reason: reason, Message: message, VIN: vin,
			Action: rec.Action, State: res.State, CarTsMs: res.TsMs})
	}
}

// auditLate records a car's result that answers no pending request.
func (r *Router) auditLate(res protocol.Result, vin string) {
	_ = r.audit.Append(audit.Event{TsMs: r.clock.Now().UnixMilli(), Kind: audit.KindLate, VIN: vin, CmdID: res.ID,
		Outcome: res.Status, Reason: string(res.Reason), Detail: "result for no pending request", CarMs: res.TsMs})
}

// finishWithMessage is finish for a car's result, with the car's message for the user (also in
// the audit record's detail).
func (r *Router) finishWithMessage(id, user, vin string, action protocol.Action, status string, reason protocol.Reason, state map[string]any, carTsMs int64, message string) {
	r.mu.Lock()
	p, wasPending := r.pending[id]
	delete(r.pending, id)
	r.mu.Unlock()
	if !wasPending && !r.clustered() { // a replica's claim in terminalReply decides
		return
	}
	detail := ""
	if message != "" {
		detail = "car: " + message
	}
	var sentMs int64
	if wasPending {
		sentMs = p.sentMs
	}
	r.terminalReply(id, user, vin, action, status, reason, state, carTsMs, sentMs, detail, message)
}

// finish answers a pending request with its terminal reply, at most once. carTsMs is the car's
// result timestamp (0 when the reply does not come from a result).
func (r *Router) finish(id, user, vin string, action protocol.Action, status string, reason protocol.Reason, state map[string]any, carTsMs int64, detail string) {
	r.mu.Lock()
	p, wasPending := r.pending[id]
	delete(r.pending, id)
	r.mu.Unlock()
	if wasPending {
		r.terminalReply(id, user, vin, action, status, reason, state, carTsMs, p.sentMs, detail, "")
	}
}

// terminal audits and sends a terminal reply.
func (r *Router) terminal(id, user, vin string, action protocol.Action, status string, reason protocol.Reason, state map[string]any, carTsMs int64, detail string) {
	r.terminalReply(id, user, vin, action, status, reason, state, carTsMs, 0, detail, "")
}

// terminalReply is terminal with the car's message for the user and the time the command was
// sent to the car (sentMs, 0 if unknown here), both for the audit record.
// A replica first claims the command's pending record (replica.go): only the one that claims
// it answers.
func (r *Router) terminalReply(id, user, vin string, action protocol.Action, status string, reason protocol.Reason, state map[string]any, carTsMs, sentMs int64, detail, message string) {
	ev := audit.Event{TsMs: r.clock.Now().UnixMilli(), Kind: audit.KindResult, User: user, VIN: vin,
		CmdID: id, Action: string(action), Outcome: status, Reason: string(reason), Detail: detail, SentMs: sentMs, CarMs: carTsMs}
	if r.clustered() {
		_, claimed, err := r.claim(id, ev)
		if err != nil {
			r.log.Error("terminal reply not sent: pending command not claimed; a sweep answers it", "cmd_id", id, "vin", vin, "status", status, "err", err)
			return
		}
		if !claimed {
			r.log.Debug("command answered by another replica", "cmd_id", id, "vin", vin, "status", status)
			return
		}
	} else {
		// One gateway: the reply goes out now and its record joins the next commit (the
		// next decision's, the twin's flush, or its own within a second: docs/OPERATIONS.md,
		// "What a crash loses"): the decision, committed before the command went out, is the
		// only commit a command waits for, and mostly the only one it costs.
		r.store.UpdateLater(func(tx kv.Tx) error { return r.audit.AppendTx(tx, ev) }, func(err error) {
			if err != nil {
				r.log.Error("audit write failed", "cmd_id", id, "err", err)
			}
		})
	}
	r.reply(user, protocol.Reply{ID: id, Status: status, Reason: reason, Message: message, VIN: vin, Action: action, State: state, CarTsMs: carTsMs})
}

// SweepExpired answers "expired" for every request whose car has not answered by its expiry
// plus the grace period (a replica: every such request of the cluster), and forgets ids past
// their replay horizon. The router calls it every sweepInterval of its clock.
func (r *Router) SweepExpired() {
	nowMs := r.clock.Now().UnixMilli()
	graceMs := r.cfg.ResultGrace.Milliseconds()
	var expired []string
	r.mu.Lock()
	for id, p := range r.pending {
		if nowMs >= p.expiresAtMs+graceMs {
			expired = append(expired, id)
		}
	}
	for id, until := range r.seen {
		if until <= nowMs {
			delete(r.seen, id)
		}
	}
	if r.clustered() {
		// The store's pending bucket is what counts: this replica's expired commands are
		// answered with every other replica's, by whichever replica claims each first.
		for _, id := range expired {
			delete(r.pending, id)
		}
		r.mu.Unlock()
		r.sweepPending(nowMs, graceMs)
		return
	}
	r.mu.Unlock()
	for _, id := range expired {
		r.mu.Lock()
		p, ok := r.pending[id]
		r.mu.Unlock()
		if ok {
			r.finish(id, p.user, p.vin, p.action, protocol.ReplyExpired, protocol.ReasonExpired, nil, 0, "no result from the car before expiry")
		}
	}
}

// PendingCount is how many accepted requests await a car's result.
func (r *Router) PendingCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

// copyWait bounds how long awaitCopy waits for a record to reach the replica's watched copy.
const copyWait = 20 * time.Millisecond

// awaitCopy waits, at most copyWait (real time), until key of bucket is in the replica's
// watched copy of the store. A car's result often reaches a replica a few milliseconds after
// another replica committed the command's pending record: a claim that read the copy before
// the record's watch event arrived would find nothing, have that confirmed by etcd in vain,
// and run again on etcd (three requests instead of one). Without a copy, or once the record is
// there, it returns at once; a record that never comes (a late result) costs copyWait.
func (r *Router) awaitCopy(bucket, key []byte) {
	cs, ok := r.store.KV().(kv.CopyScanner)
	if !ok {
		return
	}
	deadline := time.Now().Add(copyWait)
	for {
		v, ok := cs.GetCopy(bucket, key)
		if !ok || v != nil || time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Millisecond)
	}
}
