// Package audit is the gateway's append-only decision log, kept in the gateway's store
// (gateway/kv: its bbolt file, or etcd), keyed by an 8-byte big-endian sequence number.
// Every command decision, every result and every security event is one record, written before
// the gateway acts on it. Records never hold secrets, tokens or TOTP codes. On a store shared
// by replicas (etcd) a record is first written to an inbox and numbered soon after (inbox.go).
package audit

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"

	"telematics/gateway/kv"
)

var bucketAudit = []byte("audit")

// Event is one audit record.
type Event struct {
	Seq      uint64 `json:"seq"`
	TsMs     int64  `json:"ts"`
	Kind     string `json:"kind"`
	User     string `json:"user,omitempty"`
	ClientID string `json:"client_id,omitempty"`
	VIN      string `json:"vin,omitempty"`
	CmdID    string `json:"cmd_id,omitempty"`
	Action   string `json:"action,omitempty"`
	Outcome  string `json:"outcome,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Detail   string `json:"detail,omitempty"`
	// The times of a command's life (Unix ms) that the record knows, 0 where it knows none.
	// A command record's TsMs is the decision, ReceivedMs the request's arrival at the
	// gateway. A result record's TsMs is the result's arrival (or the expiry), SentMs when
	// the gateway handed the command to the broker for the car (0: another replica sent it,
	// or it was never sent), and CarMs the car's own time of its result (when it executed or
	// refused the command; also on a late_reply).
	ReceivedMs int64 `json:"received,omitempty"`
	SentMs     int64 `json:"sent,omitempty"`
	CarMs      int64 `json:"car_ts,omitempty"`
}

// Kinds of events.
const (
	KindCommand   = "command"    // a decision about an app request
	KindResult    = "result"     // a car's result, or the expiry of a request
	KindAdmin     = "admin"      // provisioning through the admin API
	KindLogin     = "login"      // password login
	KindTwoFactor = "2fa"        // enrollment, verification, lockout, reset
	KindKeys      = "keys"       // digital key changes
	KindVehicle   = "vehicle"    // what a car reports of itself (local-link journal)
	KindLate      = "late_reply" // a result that came after its request expired
)

// Kinds lists every kind, for a query that names one.
var Kinds = []string{KindCommand, KindResult, KindAdmin, KindLogin, KindTwoFactor, KindKeys, KindVehicle, KindLate}

// Log appends to and reads the audit bucket.
type Log struct {
	kv       kv.Store
	observer atomic.Pointer[func(Event)]

	// On a shared store (kv.IsShared) appends go to the inbox (inbox.go).
	inbox  bool
	writer [8]byte // this Log's part of its inbox keys, random
	mu     sync.Mutex
	lastNs int64      // the time part of this Log's newest inbox key
	moving sync.Mutex // one move of this Log at a time (its moves would only conflict)
	// movedNs is the time part of the newest inbox key this Log moved: background moves scan
	// the inbox from inboxLookback before it (inbox.go).
	movedNs atomic.Int64
	nudge   chan struct{} // capacity 1: an append committed, RunMover moves soon
}

// Open serves the audit log kept in kvs (the gateway store's, see store.Store.KV). On a
// shared store (etcd) appends go to an inbox that RunMover and every reader number into the
// log (inbox.go); elsewhere (bbolt) each append takes its number at once.
func Open(kvs kv.Store) (*Log, error) {
	l := &Log{kv: kvs, inbox: kv.IsShared(kvs), nudge: make(chan struct{}, 1)}
	if l.inbox {
		if _, err := rand.Read(l.writer[:]); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Append writes events durably in a transaction of their own; concurrent callers share a
// commit on bbolt.
func (l *Log) Append(events ...Event) error {
	return l.kv.Update(context.Background(), func(tx kv.Tx) error { return l.AppendTx(tx, events...) })
}

// Observe calls fn with every event appended to l (through Append or AppendTx), once the
// transaction that holds it has committed: an event of a transaction that failed or was
// retried is seen once, or not at all. fn runs on the committing goroutine and must be quick
// (the gateway's metrics count events with it). nil removes the observer.
func (l *Log) Observe(fn func(Event)) {
	if fn == nil {
		l.observer.Store(nil)
		return
	}
	l.observer.Store(&fn)
}

// AppendTx writes events inside the caller's transaction, so a decision and its side effects
// commit together. Each event is bounded first (MaxFieldBytes, MaxDetailBytes,
// MaxRecordBytes): a field that is too long is stored cut, with a marker.
func (l *Log) AppendTx(tx kv.Tx, events ...Event) error {
	if fn := l.observer.Load(); fn != nil {
		seen := slices.Clone(events)
		for i := range seen {
			seen[i] = bounded(seen[i])
		}
		tx.OnCommit(func() {
			for _, e := range seen {
				(*fn)(e)
			}
		})
	}
	if l.inbox {
		return l.appendInboxTx(tx, events)
	}
	for _, e := range events {
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
	}
	return nil
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// firstSeq returns the sequence number of the oldest record (0: the log is empty). Records are
// keyed by their sequence and only ever deleted from the front, so the keys from the first to
// the bucket's sequence are contiguous.
func firstSeq(tx kv.Tx) (uint64, error) {
	var first uint64
	err := tx.Scan(bucketAudit, nil, nil, func(k, _ []byte) error {
		if len(k) == 8 {
			first = binary.BigEndian.Uint64(k)
		}
		return kv.Stop
	})
	return first, err
}

// Filter selects records; empty fields match everything.
type Filter struct {
	VIN   string
	User  string
	Kind  string
	Limit int // newest first; 0 means 100
	// SinceMs and UntilMs bound the records' time (Unix ms): since included, until not; 0 is
	// no bound.
	SinceMs int64
	UntilMs int64
}

// queryWindow is how many sequence numbers Query reads per step back: kv has no reverse
// cursor (etcd would read a whole descending range at once), so Query walks back from the
// newest record in ascending windows.
const queryWindow = 256

// Query returns the newest records matching f, newest first.
func (l *Log) Query(f Filter) ([]Event, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if err := l.moveInbox(context.Background()); err != nil {
		return nil, err
	}
	var out []Event
	err := l.kv.View(context.Background(), func(tx kv.Tx) error {
		first, err := firstSeq(tx)
		if err != nil || first == 0 {
			return err
		}
		hi, err := tx.Sequence(bucketAudit)
		if err != nil {
			return err
		}
		// A query that takes every record needs only its Limit newest (the console asks for
		// the few appended since its last look, several times a second, on every replica).
		step := uint64(queryWindow)
		if f.VIN == "" && f.User == "" && f.Kind == "" && f.SinceMs == 0 && f.UntilMs == 0 && f.Limit < queryWindow {
			step = uint64(f.Limit)
		}
		var window []Event
		for hi >= first && len(out) < f.Limit {
			lo := first
			if hi-first >= step {
				lo = hi - step + 1
			}
			window = window[:0]
			err := tx.Scan(bucketAudit, nil, seqKey(lo), func(k, v []byte) error {
				if len(k) != 8 || binary.BigEndian.Uint64(k) > hi {
					return kv.Stop
				}
				var e Event
				if err := json.Unmarshal(v, &e); err != nil {
					return err
				}
				window = append(window, e)
				return nil
			})
			if err != nil {
				return err
			}
			for i := len(window) - 1; i >= 0 && len(out) < f.Limit; i-- {
				e := window[i]
				if (f.VIN == "" || e.VIN == f.VIN) && (f.User == "" || e.User == f.User) && (f.Kind == "" || e.Kind == f.Kind) &&
					(f.SinceMs == 0 || e.TsMs >= f.SinceMs) && (f.UntilMs == 0 || e.TsMs < f.UntilMs) {
					out = append(out, e)
				}
			}
			hi = lo - 1
		}
		return nil
	})
	return out, err
}

// LastSeq returns the sequence number of the newest record ever appended (0: none): a cheap
// "has anything been appended since" for readers that poll (the console).
func (l *Log) LastSeq() (uint64, error) {
	if err := l.moveInbox(context.Background()); err != nil {
		return 0, err
	}
	var last uint64
	err := l.kv.View(context.Background(), func(tx kv.Tx) error {
		var err error
		last, err = tx.Sequence(bucketAudit)
		return err
	})
	return last, err
}

// Count returns how many records the log holds.
func (l *Log) Count() (int, error) {
	if err := l.moveInbox(context.Background()); err != nil {
		return 0, err
	}
	var n int
	err := l.kv.View(context.Background(), func(tx kv.Tx) error {
		first, err := firstSeq(tx)
		if err != nil || first == 0 {
			return err
		}
		last, err := tx.Sequence(bucketAudit)
		if last >= first {
			n = int(last-first) + 1
		}
		return err
	})
	return n, err
}
