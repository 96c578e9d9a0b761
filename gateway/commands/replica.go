package commands

import (
	"context"
	"encoding/json"
	"fmt"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/pkg/protocol"
)

// A router with Config.Replica set is one replica of a cluster: several gateways on one etcd
// store behind one broker (docs/CLUSTER-DESIGN.md). Then
//   - requests and car results come through the MQTT shared subscriptions $share/gateway/…,
//     so each reaches one replica; status and telemetry stay plain subscriptions, so every
//     replica keeps the same twin (and knows which cars are online);
//   - an accepted command is written to the store's pending bucket in the transaction that
//     records the decision, so any replica can relay the car's result, whichever replica
//     the broker gives it to;
//   - every terminal reply to an accepted command claims its pending record first: one
//     Update that reads it, deletes it and appends the terminal audit record. Of two replicas
//     that claim at once (a result relayed while another replica's sweep expires the
//     command) etcd's compare lets one commit; the other finds no record and says nothing.
//     So each request gets exactly one terminal reply, also when the replica that accepted it
//     is gone;
//   - a refusal whose id is recorded (refuse with persistID) is written to the same bucket, as
//     a record of kind "refusal" under refusal/ID, in the transaction that records the
//     decision, and claimed the same way before it is sent: by the replica that refused, by
//     a replica the broker gives the redelivered request to, or by a sweep once it is older
//     than refusalSweepAfter (refusal.go). So a refusal is not lost with a replica that dies
//     between its commit and its reply, and never sent twice.

// sharedGroup is the shared-subscription group of the gateway's replicas.
const sharedGroup = "gateway"

// bucketPending holds the accepted commands awaiting their car's result: command id ->
// pendingRecord (JSON); and the refusals recorded and not yet sent: refusal/ID ->
// pendingRecord of kind "refusal" (a key apart from the id's, as one id may be accepted by
// one replica and refused by another).
var bucketPending = []byte("pending")

// CachedBuckets are this package's buckets that a replica keeps a watched copy of
// (etcdkv.Options.Cache): the cars' turns, which every decision reads, and the pending
// commands, which every result's claim reads.
var CachedBuckets = []string{string(bucketTurns), string(bucketPending)}

// pendingRecord is an accepted command, or a refusal to send, as every replica can see it.
type pendingRecord struct {
	// Kind is "" for an accepted command and kindRefusal for a refusal to send.
	Kind string `json:"kind,omitempty"`
	ID   string `json:"id"`
	VIN  string `json:"vin"`
	User string `json:"user"` // the requester: the reply goes to app/USER/reply
	// ReplyTopic is where the terminal reply goes (app/USER/reply), kept for operators and
	// tools that read the bucket.
	ReplyTopic  string          `json:"reply_topic"`
	Action      protocol.Action `json:"action"`
	ExpiresAtMs int64           `json:"expires_at"`
	// Replica is the replica that accepted (or refused) the command (for the log and for
	// operators).
	Replica string `json:"replica"`
	// A refusal's reply, and when it was recorded (unix ms, the refusing replica's clock).
	Status      string          `json:"status,omitempty"`
	Reason      protocol.Reason `json:"reason,omitempty"`
	Message     string          `json:"message,omitempty"`
	RefusedAtMs int64           `json:"refused_at,omitempty"`
}

// clustered reports whether the router is a replica of a cluster.
func (r *Router) clustered() bool { return r.cfg.Replica != "" }

// filter is the subscription filter of f: shared among the replicas when clustered.
func (r *Router) filter(f string, shared bool) string {
	if shared && r.clustered() {
		return "$share/" + sharedGroup + "/" + f
	}
	return f
}

// putPendingTx writes, in the transaction that records a decision (ev), an accepted command's
// pending record, or a refusal's record of what to send (refusal.go), when the router is a
// replica; one gateway keeps pending commands in memory only and sends its refusals at once.
func (r *Router) putPendingTx(tx kv.Tx, ev audit.Event, expiresAtMs int64) error {
	if !r.clustered() {
		return nil
	}
	rec := pendingRecord{ID: ev.CmdID, VIN: ev.VIN, User: ev.User,
		ReplyTopic: protocol.AppTopic(ev.User, protocol.SuffixReply), Action: protocol.Action(ev.Action),
		ExpiresAtMs: expiresAtMs, Replica: r.cfg.Replica}
	key := []byte(ev.CmdID)
	switch ev.Outcome {
	case protocol.ReplyAccepted:
	case protocol.ReplyRejected:
		rec.Kind, rec.Status, rec.Reason = kindRefusal, ev.Outcome, protocol.Reason(ev.Reason)
		rec.RefusedAtMs = r.clock.Now().UnixMilli()
		key = refusalKey(ev.CmdID)
	default:
		return nil
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return tx.Put(bucketPending, key, b)
}

// claim takes the pending record of id and appends ev, the terminal audit record, in one
// Update; claimed false when there is no record (another replica answered already, or none was
// ever made) or it is another car's (ev.VIN). ev's user and action become the record's, which
// claim returns: a replica that relays a result for a command another replica accepted learns
// there whom to answer.
func (r *Router) claim(id string, ev audit.Event) (rec pendingRecord, claimed bool, err error) {
	err = r.store.Update(context.Background(), func(tx kv.Tx) error {
		claimed = false // the function may run again
		v, err := tx.Get(bucketPending, []byte(id))
		if err != nil || v == nil {
			return err
		}
		rec = pendingRecord{}
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("pending record %s: %w", id, err)
		}
		if rec.Kind != "" || rec.VIN != ev.VIN {
			return nil // a refusal's record (refusal.go), or a car answering another's command
		}
		if err := tx.Delete(bucketPending, []byte(id)); err != nil {
			return err
		}
		e := ev
		e.User, e.Action = rec.User, string(rec.Action)
		if err := r.audit.AppendTx(tx, e); err != nil {
			return err
		}
		claimed = true
		return nil
	})
	return rec, claimed, err
}

// sweepPending answers "expired" for every pending command of the cluster whose car has not
// answered by its expiry plus the grace period, whichever replica accepted it: each is claimed
// first, so a command another replica answers meanwhile is not answered twice. In the same
// scan it finds the recorded refusals older than refusalSweepAfter (their replica died
// before sending them, and no redelivery came) and sends each it claims.
func (r *Router) sweepPending(nowMs, graceMs int64) {
	var expired, refusals []pendingRecord
	// Found in the replica's watched copy when it keeps one: each is claimed (confirmed) before
	// it is answered, and a scan of etcd 10 times a second on every replica would visit every
	// pending record deleted since etcd's last compaction.
	err := kv.ScanCandidates(context.Background(), r.store.KV(), bucketPending, func(k, v []byte) error {
		var rec pendingRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			r.log.Error("unreadable pending record", "cmd_id", string(k), "err", err)
			return nil
		}
		switch {
		case rec.Kind == kindRefusal:
			if nowMs >= rec.RefusedAtMs+refusalSweepAfter.Milliseconds() {
				refusals = append(refusals, rec)
			}
		case rec.Kind != "":
			r.log.Error("pending record of unknown kind", "key", string(k), "kind", rec.Kind)
		case nowMs >= rec.ExpiresAtMs+graceMs:
			expired = append(expired, rec)
		}
		return nil
	})
	// A dead turn does no harm until it is deleted (myTurn passes over expired ones), so the
	// turns are scanned once every turnSweepEvery, not at every sweep of the pending commands.
	if last := r.turnsSweptMs.Load(); nowMs-last >= turnSweepEvery.Milliseconds() && r.turnsSweptMs.CompareAndSwap(last, nowMs) {
		r.sweepTurns(nowMs, graceMs)
	}
	if err != nil {
		r.log.Warn("sweep of pending commands failed", "err", err)
		return
	}
	for _, rec := range expired {
		r.mu.Lock()
		delete(r.pending, rec.ID)
		r.mu.Unlock()
		detail := "no result from the car before expiry"
		if rec.Replica != r.cfg.Replica {
			detail += " (accepted by replica " + rec.Replica + ")"
		}
		r.terminal(rec.ID, rec.User, rec.VIN, rec.Action, protocol.ReplyExpired, protocol.ReasonExpired, nil, 0, detail)
	}
	for _, rec := range refusals {
		r.sendRecordedRefusal(rec.ID, "swept")
	}
}
