package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"telematics/gateway/kv"
)

// The inbox: audited writes on a shared store.
//
// Every number comes from the bucket's one sequence key. On bbolt there is one writer and
// reading it costs nothing; on etcd every audited write of every replica would read and bump
// it, so all of them would conflict with each other and run again, each time through raft
// (docs/PERFORMANCE.md, "The audit log's sequence on etcd"). So on a shared store AppendTx
// reads nothing: it writes each record to the inbox bucket under a key no other writer can
// make (inboxKey: the time, then the Log's random writer id), in the transaction of the
// decision it audits. A move then numbers the oldest inbox records in one transaction: it
// takes the next sequence numbers in inbox key order, puts each record under its number in
// the audit bucket (the same layout as on bbolt) and deletes it from the inbox.
//
// So the log's keys stay contiguous and gapless, and numbers follow the order of the moves'
// commits: a reader that saw number N never sees a smaller one appear later (the console's
// "after N" cursor). Within one move, records are numbered by their inbox keys, that is by the
// writers' clocks (nanoseconds, made strictly increasing per Log): as close to the order
// their transactions committed as the replicas' clocks agree.
//
// Moves happen in the background (RunMover, on every replica: soon after each append, and
// every moverIdle for what others left, a crashed replica's records too) and at the start of
// every read (Query, Count, LastSeq, Prune), so a reader sees everything appended before it
// began. Two moves at once conflict on the sequence and one of them wins; the other finds the
// records gone when it runs again.

// bucketInbox holds, on a shared store, the records not numbered yet: inboxKey -> the
// record's JSON with seq 0.
var bucketInbox = []byte("auditin")

// moveBatch bounds the records one move numbers: each costs a compare (it was read), a put and
// a delete in one etcd transaction, which carries at most 128 of each (--max-txn-ops), with
// the sequence's compare and put.
const moveBatch = 50

// Background moves: moverSettle after an append (so that the appends of that moment are
// numbered together), and every moverIdle in any case. A background move takes only the
// records whose key is moverSettle old: an append still in flight (its key made, its
// transaction not committed) would land inside the range the move read and make the move
// conflict and run again, and appends are in flight all the time on a busy replica. Readers
// move everything, whatever that costs.
const (
	moverSettle = 100 * time.Millisecond
	moverIdle   = time.Second
)

// A background move scans the inbox from inboxLookback before the newest key its Log moved,
// not from the inbox's start: etcd's range read visits every key deleted since its last
// compaction (with periodic compaction, an hour of moved records), and the inbox's keys come
// and go all the time. An append's key is made just before its transaction, which takes at
// most the store's time bound (5 s), so what commits after a move is not older than that;
// replicas' clocks may differ more, so every fullMoveEvery a background move scans the whole
// inbox, and so does every reader.
const (
	inboxLookback = 10 * time.Second
	fullMoveEvery = 30 * time.Second
)

// inboxKey returns a new inbox key of l: 8 bytes of big-endian Unix nanoseconds, strictly
// increasing per Log (a clock stepped back does not reorder l's records), then l's 8-byte
// writer id. Unique without coordination: no other Log has the writer id.
func (l *Log) inboxKey() []byte {
	l.mu.Lock()
	ns := time.Now().UnixNano()
	if ns <= l.lastNs {
		ns = l.lastNs + 1
	}
	l.lastNs = ns
	l.mu.Unlock()
	k := binary.BigEndian.AppendUint64(make([]byte, 0, 16), uint64(ns))
	return append(k, l.writer[:]...)
}

// appendInboxTx writes events to the inbox in tx. It reads nothing, so appends of different
// transactions never conflict.
func (l *Log) appendInboxTx(tx kv.Tx, events []Event) error {
	for _, e := range events {
		e.Seq = 0
		v, err := encode(e)
		if err != nil {
			return err
		}
		if err := tx.Put(bucketInbox, l.inboxKey(), v); err != nil {
			return err
		}
	}
	tx.OnCommit(func() {
		select {
		case l.nudge <- struct{}{}:
		default:
		}
	})
	return nil
}

// moveInbox numbers every record in the inbox into the log, in transactions of at most
// moveBatch records, until a look at the inbox finds fewer than that: every record committed
// before it was called is then in the log. It does nothing on a store that is not shared.
func (l *Log) moveInbox(ctx context.Context) error { return l.moveOlder(ctx, 0, nil) }

// moveOlder is moveInbox for the records whose keys are older than age (0: all) and not before
// from (nil: from the start).
func (l *Log) moveOlder(ctx context.Context, age time.Duration, from []byte) error {
	if !l.inbox {
		return nil
	}
	var before []byte // keys from here on are too young
	if age > 0 {
		before = binary.BigEndian.AppendUint64(nil, uint64(time.Now().Add(-age).UnixNano()))
	}
	l.moving.Lock()
	defer l.moving.Unlock()
	for {
		found, moved, err := l.moveOnce(ctx, before, from)
		if err != nil {
			return fmt.Errorf("number the audit inbox: %w", err)
		}
		if found < moveBatch && moved < moveBatch {
			return nil
		}
	}
}

// moveOnce moves the oldest records of the inbox (at most moveBatch, keys before before if
// not nil) and returns how many it found there and how many it moved. It finds them in a View
// first, and the Update reads the inbox only up to the last of them: an Update that scanned to
// the end of the inbox would conflict with every record appended meanwhile (etcd compares the
// scanned range). Appends committed in between with older keys (made before, committed after)
// are moved too, up to moveBatch in all: moved == moveBatch means some found may be left.
func (l *Log) moveOnce(ctx context.Context, before, from []byte) (found, moved int, err error) {
	var last []byte
	err = l.kv.View(ctx, func(tx kv.Tx) error {
		found, last = 0, nil
		return tx.Scan(bucketInbox, nil, from, func(k, _ []byte) error {
			if before != nil && bytes.Compare(k, before) >= 0 {
				return kv.Stop
			}
			found++
			last = bytes.Clone(k)
			if found == moveBatch {
				return kv.Stop
			}
			return nil
		})
	})
	if err != nil || found == 0 {
		return 0, 0, err
	}
	err = l.kv.Update(ctx, func(tx kv.Tx) error {
		type record struct{ k, v []byte }
		var recs []record // collected first, written after: a Scan callback must not write
		err := tx.Scan(bucketInbox, nil, from, func(k, v []byte) error {
			if bytes.Compare(k, last) > 0 {
				return kv.Stop // moved by another mover meanwhile
			}
			recs = append(recs, record{bytes.Clone(k), bytes.Clone(v)})
			if bytes.Equal(k, last) || len(recs) == moveBatch {
				return kv.Stop
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range recs {
			var e Event
			if err := json.Unmarshal(r.v, &e); err != nil {
				return fmt.Errorf("inbox record %x: %w", r.k, err)
			}
			seq, err := tx.NextSequence(bucketAudit)
			if err != nil {
				return err
			}
			e.Seq = seq
			v, err := encode(e)
			if err != nil {
				return err
			}
			if err := tx.Put(bucketAudit, seqKey(seq), v); err != nil {
				return err
			}
			if err := tx.Delete(bucketInbox, r.k); err != nil {
				return err
			}
		}
		moved = len(recs)
		return nil
	})
	if err == nil && len(last) >= 8 {
		ns := int64(binary.BigEndian.Uint64(last))
		for {
			cur := l.movedNs.Load()
			if ns <= cur || l.movedNs.CompareAndSwap(cur, ns) {
				break
			}
		}
	}
	return found, moved, err
}

// RunMover numbers the inbox into the log until ctx ends: moverDelay after an append of l,
// and every moverIdle for the records of other writers (replicas, a crashed one's too). Errors
// go to log; the next move, or the next reader, tries again. On a store that is not shared it
// returns at once.
func (l *Log) RunMover(ctx context.Context, log *slog.Logger) {
	if !l.inbox {
		return
	}
	idle := time.NewTimer(moverIdle)
	defer idle.Stop()
	lastFull := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-idle.C:
		case <-l.nudge:
			wait := time.NewTimer(moverSettle)
			select {
			case <-ctx.Done():
				wait.Stop()
				return
			case <-wait.C:
			}
		}
		var from []byte
		if moved := l.movedNs.Load(); moved != 0 && time.Since(lastFull) < fullMoveEvery {
			from = binary.BigEndian.AppendUint64(nil, uint64(moved-inboxLookback.Nanoseconds()))
		} else {
			lastFull = time.Now()
		}
		if err := l.moveOlder(ctx, moverSettle, from); err != nil && ctx.Err() == nil {
			log.Warn("audit inbox not numbered yet; the next move tries again", "err", err)
		}
		idle.Reset(moverIdle)
	}
}
