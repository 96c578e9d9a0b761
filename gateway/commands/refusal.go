package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"telematics/gateway/kv"
	"telematics/pkg/protocol"
)

// A replica's refusal whose id it records (refuse with persistID) must reach the app also when
// the replica dies between the commit and the reply: the broker then gives the request (DUP)
// to another replica, which finds the id decided and, by the rule of redelivery.go, would say
// nothing. So the replica records, in the decision's transaction, the reply it owes (a
// pendingRecord of kind "refusal" under refusal/ID in the pending bucket) and sends it only
// once it has claimed that record: one Update that reads and deletes it, as an accepted
// command's terminal reply is claimed. Whoever claims it sends it, and no one else:
//   - the replica that refused, at once (the common case: one more transaction per recorded
//     refusal, on replicas only);
//   - a replica given the redelivered request, whose id is decided (redeliveredAndDecided);
//   - any replica's sweep, once the record is older than refusalSweepAfter (the replica died
//     and no redelivery came, or its claim failed).
// A refusal that records no id (a malformed or expired request, a duplicate, a turn not had)
// is sent at once, as on one gateway: a redelivery decides it again.

// kindRefusal marks a pendingRecord that is a refusal to send.
const kindRefusal = "refusal"

// refusalSweepAfter is how old a recorded refusal must be before a sweep sends it: its replica
// normally claims it within milliseconds of recording it, so a sweep finds only those of a
// replica that died (or could not claim), and does not race the living replica's claim.
const refusalSweepAfter = time.Second

// refusalKey is the pending bucket's key of id's recorded refusal (ids have no "/").
func refusalKey(id string) []byte { return []byte("refusal/" + id) }

// claimRefusal takes id's recorded refusal from the store: of the replicas that try at once,
// exactly one gets ok (the delete conflicts on the record's mod revision, and the loser's
// retry finds no record). ok false: none (sent by another replica, or never recorded).
func (r *Router) claimRefusal(id string) (rec pendingRecord, ok bool, err error) {
	err = r.store.Update(context.Background(), func(tx kv.Tx) error {
		ok = false // the function may run again
		v, err := tx.Get(bucketPending, refusalKey(id))
		if err != nil || v == nil {
			return err
		}
		if err := json.Unmarshal(v, &rec); err != nil {
			r.log.Error("unreadable recorded refusal; dropped", "cmd_id", id, "err", err)
			return tx.Delete(bucketPending, refusalKey(id))
		}
		if err := tx.Delete(bucketPending, refusalKey(id)); err != nil {
			return err
		}
		ok = true
		return nil
	})
	if err != nil {
		return pendingRecord{}, false, fmt.Errorf("claim recorded refusal %s: %w", id, err)
	}
	return rec, ok, nil
}

// sendRecordedRefusal claims id's recorded refusal and sends it if the claim is this
// replica's; by names who sends it, for the log. It reports whether it sent it.
func (r *Router) sendRecordedRefusal(id, by string) bool {
	rec, ok, err := r.claimRefusal(id)
	if err != nil {
		r.log.Error("refusal not sent: not claimed; a sweep sends it", "cmd_id", id, "err", err)
		return false
	}
	if !ok {
		return false
	}
	if rec.Replica != r.cfg.Replica {
		r.log.Info("refusal recorded by another replica sent here", "cmd_id", id, "user", rec.User,
			"reason", rec.Reason, "refused_by", rec.Replica, "sent_because", by)
	}
	r.reply(rec.User, protocol.Reply{ID: rec.ID, Status: rec.Status, Reason: rec.Reason, Message: rec.Message,
		VIN: rec.VIN, Action: rec.Action})
	return true
}
