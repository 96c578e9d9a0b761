package commands

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"telematics/gateway/kv"
)

// Per-car order across replicas. One gateway decides a car's commands in the order they
// arrive, one at a time, because they share the car's shard (Submit). Replicas do not share
// shards, so a replica orders a car's commands through the store:
//   - a request is accepted by the cluster when it takes a turn: an Update that increments
//     the car's counter (carseq/VIN) and writes carturns/VIN/N (N in 16 hex digits, so keys
//     sort by N). Two replicas taking turns for one car at once conflict on the counter and
//     etcd orders them: that order is the acceptance order;
//   - it is decided when every earlier turn of the car is gone or past its command's expiry:
//     the replica polls a scan of carturns/VIN/ (one range read) until then;
//   - mostly the car has no turn in flight: then the request takes its turn in the very
//     transaction that records its decision (decide_replica.go), which scanned carturns/VIN/
//     and found no live turn; a turn taken meanwhile by another replica changes that range
//     and makes the transaction run again, and then wait. So a lone request costs one commit
//     before its command goes out, and the order is the same: by the counter's commits;
//   - the turn is given back (deleted) once the command is refused or, if accepted, handed to
//     the broker: so the next command is decided after it and reaches the car after it.
//
// A turn is held at most until its command expires (a replica never sends a command after
// its expiry), so the turn of a replica that died mid-decision delays the car's next commands
// until then and no longer; the sweep deletes such turns. Expiry is judged by each replica's
// clock: replicas' clocks must agree to well under a command's lifetime (NTP).

var (
	// bucketTurns holds the turns in flight: VIN/N -> turnRecord (JSON).
	bucketTurns = []byte("carturns")
	// bucketTurnSeq holds each car's last turn number: VIN -> uint64 (big endian).
	bucketTurnSeq = []byte("carseq")
)

// turnRecord is a request's place in its car's order.
type turnRecord struct {
	ID          string `json:"id"`
	Replica     string `json:"replica"`
	ExpiresAtMs int64  `json:"expires_at"`
}

// turnPollInterval is how often a waiting request reads its car's turns again (real time: a
// read costs one etcd range request).
const turnPollInterval = 10 * time.Millisecond

// errTurnLost means a request waited for its turn until its command expired.
var errTurnLost = errors.New("no turn before expiry")

// takeTurn gives the command id for vin the next place in the car's order and returns its key.
func (r *Router) takeTurn(vin, id string, expiresAtMs int64) ([]byte, error) {
	var key []byte
	err := r.store.Update(context.Background(), func(tx kv.Tx) error {
		var err error
		key, err = r.takeTurnTx(tx, vin, id, expiresAtMs)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("take the car's turn: %w", err)
	}
	return key, nil
}

// takeTurnTx is takeTurn inside tx.
func (r *Router) takeTurnTx(tx kv.Tx, vin, id string, expiresAtMs int64) ([]byte, error) {
	rec, err := json.Marshal(turnRecord{ID: id, Replica: r.cfg.Replica, ExpiresAtMs: expiresAtMs})
	if err != nil {
		return nil, err
	}
	v, err := tx.Get(bucketTurnSeq, []byte(vin))
	if err != nil {
		return nil, err
	}
	var n uint64
	if len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	n++
	if err := tx.Put(bucketTurnSeq, []byte(vin), binary.BigEndian.AppendUint64(nil, n)); err != nil {
		return nil, err
	}
	key := fmt.Appendf(nil, "%s/%016x", vin, n)
	return key, tx.Put(bucketTurns, key, rec)
}

// firstLiveTurnTx returns the key of vin's first turn whose command has not expired at nowMs
// (nil: none), in tx.
func (r *Router) firstLiveTurnTx(tx kv.Tx, vin string, nowMs int64) ([]byte, error) {
	var first []byte
	err := tx.Scan(bucketTurns, []byte(vin+"/"), nil, func(k, v []byte) error {
		var rec turnRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			r.log.Error("unreadable turn record", "key", string(k), "err", err)
			return nil
		}
		if nowMs >= rec.ExpiresAtMs {
			return nil // its command can no longer be sent
		}
		first = append([]byte(nil), k...)
		return kv.Stop
	})
	return first, err
}

// myTurn reports whether every turn of vin before key is gone or expired at nowMs.
func (r *Router) myTurn(vin string, key []byte, nowMs int64) (bool, error) {
	var first []byte
	err := r.store.View(context.Background(), func(tx kv.Tx) error {
		var err error
		first, err = r.firstLiveTurnTx(tx, vin, nowMs)
		return err
	})
	return string(first) == string(key), err
}

// waitTurn waits until key is vin's first live turn; errTurnLost if the command expires
// first.
func (r *Router) waitTurn(vin string, key []byte, expiresAtMs int64) error {
	for {
		nowMs := r.clock.Now().UnixMilli()
		if nowMs >= expiresAtMs {
			return errTurnLost
		}
		ok, err := r.myTurn(vin, key, nowMs)
		if err != nil || ok {
			return err
		}
		t := time.NewTimer(turnPollInterval)
		select {
		case <-r.ctx.Done():
			t.Stop()
			return fmt.Errorf("router closing while waiting for the car's turn: %w", r.ctx.Err())
		case <-t.C:
		}
	}
}

// releaseTurn gives key back; a turn not given back (store unreachable) is swept after its
// command's expiry.
func (r *Router) releaseTurn(vin string, key []byte) {
	err := r.store.Update(context.Background(), func(tx kv.Tx) error { return tx.Delete(bucketTurns, key) })
	if err != nil {
		r.log.Warn("car's turn not given back; it ends with its command's expiry", "vin", vin, "err", err)
	}
}

// turnSweepEvery is how often a replica's sweep also scans the turns (its clock): expired
// turns are passed over by waiting requests, so deleting them is housekeeping, and a scan
// of the whole bucket 10 times a second on every replica costs etcd for nothing.
const turnSweepEvery = time.Second

// sweepTurnsBatch bounds the turns one sweep transaction deletes (etcd's --max-txn-ops).
const sweepTurnsBatch = 100

// sweepTurns deletes the turns whose command expired before nowMs-graceMs: those of replicas
// that stopped mid-decision, or that could not give them back.
func (r *Router) sweepTurns(nowMs, graceMs int64) {
	var stale [][]byte
	err := r.store.View(context.Background(), func(tx kv.Tx) error {
		stale = stale[:0]
		return tx.Scan(bucketTurns, nil, nil, func(k, v []byte) error {
			var rec turnRecord
			if json.Unmarshal(v, &rec) != nil || nowMs >= rec.ExpiresAtMs+graceMs {
				stale = append(stale, append([]byte(nil), k...))
			}
			if len(stale) == sweepTurnsBatch {
				return kv.Stop
			}
			return nil
		})
	})
	if err != nil || len(stale) == 0 {
		return
	}
	err = r.store.Update(context.Background(), func(tx kv.Tx) error {
		for _, k := range stale {
			if err := tx.Delete(bucketTurns, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		r.log.Warn("sweep of expired turns failed", "err", err)
	}
}
