package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"telematics/pkg/protocol"
	"time"

	"telematics/gateway/kv"
)

// Per-car order across replicas. One gateway decides a car's commands in the order they
// arrive, one at a time, because they share the car's shard (Submit). Replicas do not share
// shards, so a replica orders a car's commands through the store, in one record per car:
// carqueue/VIN holds the car's turns in flight, in order, and the last turn number given.
//   - a request is accepted by the cluster when it takes a turn: an Update that reads the
//     car's queue, appends {n: last+1, id, replica, expires_at} and writes it back. Two
//     replicas taking turns for one car at once conflict on the record and etcd orders them:
//     that order is the acceptance order;
//   - it is decided when every earlier turn of the car is gone or past its command's expiry:
//     the replica polls a read of the car's queue (one range read) until then;
//   - mostly the car has no live turn: then the request takes its turn in the very
//     transaction that records its decision (decide_replica.go), which read the queue (from
//     the replica's watched copy, no round trip) and found no live turn; a turn taken
//     meanwhile by another replica changes the record and makes the transaction run again,
//     and then wait. So a lone request costs one commit before its command goes out, and the
//     order is the same: by the record's commits;
//   - the turn is given back (removed from the queue) once the command is refused or, if
//     accepted, handed to the broker: so the next command is decided after it and reaches
//     the car after it.
//
// A turn is held at most until its command expires (a replica never sends a command after
// its expiry), so the turn of a replica that died mid-decision delays the car's next commands
// until then and no longer; every write of the queue drops the turns expired longer than the
// result grace ago, and the sweep does for cars no request comes for. Expiry is judged by each
// replica's clock: replicas' clocks must agree to well under a command's lifetime (NTP).

// bucketTurns holds each car's turns in flight: VIN -> turnQueue (JSON).
var bucketTurns = []byte("carqueue")

// maxTurnsPerCar bounds a car's turns in flight (its queue record): a request that finds as
// many live turns is refused rate_limited. Commands wait at most their lifetime, so this is
// reached only by a flood of commands for one car.
const maxTurnsPerCar = 64

// turnQueue is a car's order: the turns in flight, oldest first, and the last number given.
type turnQueue struct {
	Last  uint64       `json:"last"`
	Turns []turnRecord `json:"turns,omitempty"`
}

// turnRecord is a request's place in its car's order.
type turnRecord struct {
	N           uint64 `json:"n"`
	ID          string `json:"id"`
	Replica     string `json:"replica"`
	ExpiresAtMs int64  `json:"expires_at"`
}

// carTurn names a turn: its number and its command id (a give-back matches both).
type carTurn struct {
	N  uint64
	ID string
}

// turnPollInterval is how often a waiting request reads its car's turns again (real time; a
// read of the replica's watched copy, or one etcd request without one).
const turnPollInterval = 5 * time.Millisecond

// errTurnLost is waitTurn's refusal for a request that waited for its turn until its command
// expired.
var errTurnLost = protocol.Refuse(protocol.ReasonExpired, "expired while the car's earlier commands were decided")

// firstLive is the queue's first turn whose command has not expired at nowMs (nil: none).
func (q turnQueue) firstLive(nowMs int64) *carTurn {
	for _, t := range q.Turns {
		if nowMs < t.ExpiresAtMs {
			return &carTurn{N: t.N, ID: t.ID}
		}
	}
	return nil
}

// readQueueTx reads vin's queue in tx (empty: none). An unreadable record is logged and read
// as empty: its turns can no longer be honoured, and the next write replaces it.
func (r *Router) readQueueTx(tx kv.Tx, vin string) (turnQueue, error) {
	var q turnQueue
	v, err := tx.Get(bucketTurns, []byte(vin))
	if err != nil || v == nil {
		return q, err
	}
	if err := json.Unmarshal(v, &q); err != nil {
		r.log.Error("unreadable turn queue", "vin", vin, "err", err)
		return turnQueue{}, nil
	}
	return q, nil
}

// writeQueueTx writes vin's queue without the turns expired before nowMs-grace. An empty queue
// is written too, not deleted: its record changes with every turn taken and given back, so a
// decision that read "no live turn" before another took and gave back a turn (absent, then
// present, then absent again would compare equal) runs again, and its audit record is made
// after the other's, in the order the car got them.
func (r *Router) writeQueueTx(tx kv.Tx, vin string, q turnQueue, nowMs int64) error {
	graceMs := r.cfg.ResultGrace.Milliseconds()
	q.Turns = slices.DeleteFunc(q.Turns, func(t turnRecord) bool { return nowMs >= t.ExpiresAtMs+graceMs })
	b, err := json.Marshal(q)
	if err != nil {
		return err
	}
	return tx.Put(bucketTurns, []byte(vin), b)
}

// takeTurn gives the command id for vin the next place in the car's order.
func (r *Router) takeTurn(vin, id string, expiresAtMs int64) (*carTurn, error) {
	var t *carTurn
	err := r.store.Update(context.Background(), func(tx kv.Tx) error {
		var err error
		t, err = r.takeTurnTx(tx, vin, id, expiresAtMs)
		return err
	})
	if err != nil && protocol.ReasonOf(err) == protocol.ReasonInternal {
		return nil, fmt.Errorf("take the car's turn: %w", err)
	}
	return t, err
}

// takeTurnTx is takeTurn inside tx; a refusal (rate_limited) when the car has maxTurnsPerCar
// live turns.
func (r *Router) takeTurnTx(tx kv.Tx, vin, id string, expiresAtMs int64) (*carTurn, error) {
	q, err := r.readQueueTx(tx, vin)
	if err != nil {
		return nil, err
	}
	nowMs := r.clock.Now().UnixMilli()
	live := 0
	for _, t := range q.Turns {
		if nowMs < t.ExpiresAtMs {
			live++
		}
	}
	if live >= maxTurnsPerCar {
		return nil, protocol.Refuse(protocol.ReasonRateLimited, "%d commands for this car are in flight already", live)
	}
	q.Last++
	q.Turns = append(q.Turns, turnRecord{N: q.Last, ID: id, Replica: r.cfg.Replica, ExpiresAtMs: expiresAtMs})
	return &carTurn{N: q.Last, ID: id}, r.writeQueueTx(tx, vin, q, nowMs)
}

// firstLiveTurnTx returns vin's first turn whose command has not expired at nowMs (nil:
// none), in tx.
func (r *Router) firstLiveTurnTx(tx kv.Tx, vin string, nowMs int64) (*carTurn, error) {
	q, err := r.readQueueTx(tx, vin)
	if err != nil {
		return nil, err
	}
	return q.firstLive(nowMs), nil
}

// myTurn reports whether every turn of vin before t is gone or expired at nowMs, as the
// replica's watched copy of the queues says (kv.GetCandidate; a View without one): it may be
// behind, so the decision's transaction checks the turn again (errNotYourTurn).
func (r *Router) myTurn(vin string, t *carTurn, nowMs int64) (bool, error) {
	v, err := kv.GetCandidate(context.Background(), r.store.KV(), bucketTurns, []byte(vin))
	if err != nil {
		return false, err
	}
	var q turnQueue
	if v != nil {
		if err := json.Unmarshal(v, &q); err != nil {
			return false, fmt.Errorf("turn queue of %s: %w", vin, err)
		}
	}
	first := q.firstLive(nowMs)
	return first != nil && *first == *t, nil
}

// errNotYourTurn is the decision transaction's answer when the request holds a turn that is
// not (yet) the car's first live one: the copy waitTurn read was behind.
var errNotYourTurn = errors.New("an earlier turn of the car is live")

// waitTurn waits until t is vin's first live turn; errTurnLost (a refusal, expired) if the
// command expires first.
func (r *Router) waitTurn(vin string, t *carTurn, expiresAtMs int64) error {
	for {
		nowMs := r.clock.Now().UnixMilli()
		if nowMs >= expiresAtMs {
			return errTurnLost
		}
		ok, err := r.myTurn(vin, t, nowMs)
		if err != nil || ok {
			return err
		}
		timer := time.NewTimer(turnPollInterval)
		select {
		case <-r.ctx.Done():
			timer.Stop()
			return fmt.Errorf("router closing while waiting for the car's turn: %w", r.ctx.Err())
		case <-timer.C:
		}
	}
}

// releaseTurn gives t back; a turn not given back (store unreachable) ends with its command's
// expiry and is dropped by the next write of the car's queue or the sweep.
func (r *Router) releaseTurn(vin string, t *carTurn) {
	err := r.store.Update(context.Background(), func(tx kv.Tx) error {
		q, err := r.readQueueTx(tx, vin)
		if err != nil {
			return err
		}
		n := len(q.Turns)
		q.Turns = slices.DeleteFunc(q.Turns, func(x turnRecord) bool { return x.N == t.N && x.ID == t.ID })
		if len(q.Turns) == n {
			return nil // dropped already
		}
		return r.writeQueueTx(tx, vin, q, r.clock.Now().UnixMilli())
	})
	if err != nil {
		r.log.Warn("car's turn not given back; it ends with its command's expiry", "vin", vin, "err", err)
	}
}

// turnSweepEvery is how often a replica's sweep also reads the cars' queues (its clock):
// expired turns are passed over by waiting requests and dropped by the next write of their
// queue, so the sweep is housekeeping for cars no request comes for, and a scan of the whole
// bucket 10 times a second on every replica costs etcd for nothing.
const turnSweepEvery = time.Second

// sweepTurnsBatch bounds the queues one sweep transaction writes (etcd's --max-txn-ops).
const sweepTurnsBatch = 100

// sweepTurns drops the turns whose command expired before nowMs-graceMs: those of replicas
// that stopped mid-decision, or that could not give them back.
func (r *Router) sweepTurns(nowMs, graceMs int64) {
	dead := func(t turnRecord) bool { return nowMs >= t.ExpiresAtMs+graceMs }
	var stale [][]byte
	// Found in the replica's watched copy when it keeps one; the Update reads each queue again.
	err := kv.ScanCandidates(context.Background(), r.store.KV(), bucketTurns, func(k, v []byte) error {
		var q turnQueue
		if json.Unmarshal(v, &q) != nil || slices.ContainsFunc(q.Turns, dead) {
			stale = append(stale, append([]byte(nil), k...))
		}
		if len(stale) == sweepTurnsBatch {
			return kv.Stop
		}
		return nil
	})
	if err != nil || len(stale) == 0 {
		return
	}
	err = r.store.Update(context.Background(), func(tx kv.Tx) error {
		for _, vin := range stale {
			q, err := r.readQueueTx(tx, string(vin))
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(q.Turns, dead) {
				continue // a request gave its turn back or took one meanwhile: nothing to drop
			}
			if err := r.writeQueueTx(tx, string(vin), q, nowMs); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		r.log.Warn("sweep of expired turns failed", "err", err)
	}
}
