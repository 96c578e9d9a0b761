// Package audit is the gateway's append-only decision log, kept in the gateway's bbolt file.
// Every command decision, every result and every security event is one record, written before
// the gateway acts on it. Records never hold secrets, tokens or TOTP codes.
package audit

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
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
	db    *bolt.DB
	write func(func(*bolt.Tx) error) error
}

// OpenWith is Open with the writer durable appends go through (the gateway's group committer).
func OpenWith(db *bolt.DB, write func(func(*bolt.Tx) error) error) (*Log, error) {
	l, err := Open(db)
	if err != nil {
		return nil, err
	}
	l.write = write
	return l, nil
}

// Open makes sure the bucket exists; appends use db.Batch.
func Open(db *bolt.DB) (*Log, error) {
	err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketAudit)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create audit bucket: %w", err)
	}
	return &Log{db: db, write: db.Batch}, nil
}

// Append writes events durably; concurrent callers share a commit.
func (l *Log) Append(events ...Event) error {
	return l.write(func(tx *bolt.Tx) error { return AppendTx(tx, events...) })
}

// observers holds each database's observer (see Log.Observe): AppendTx is called with the
// caller's transaction, not with a Log.
var observers sync.Map // *bolt.DB -> func(Event)

// Observe calls fn with every event appended to l's database (through Append or AppendTx),
// once the transaction that holds it has committed: an event of a transaction that failed or
// was retried is seen once, or not at all. fn runs on the committing goroutine and must be
// quick (the gateway's metrics count events with it). nil removes the observer.
func (l *Log) Observe(fn func(Event)) {
	if fn == nil {
		observers.Delete(l.db)
		return
	}
	observers.Store(l.db, fn)
}

// AppendTx writes events inside the caller's transaction, so a decision and its side effects
// commit together. Each event is bounded first (MaxFieldBytes, MaxDetailBytes,
// MaxRecordBytes): a field that is too long is stored cut, with a marker.
func AppendTx(tx *bolt.Tx, events ...Event) error {
	if fn, ok := observers.Load(tx.DB()); ok {
		seen := slices.Clone(events)
		for i := range seen {
			seen[i] = bounded(seen[i])
		}
		tx.OnCommit(func() {
			for _, e := range seen {
				fn.(func(Event))(e)
			}
		})
	}
	b := tx.Bucket(bucketAudit)
	for _, e := range events {
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		e.Seq = seq
		v, err := encode(e)
		if err != nil {
			return err
		}
		if err := b.Put(binary.BigEndian.AppendUint64(nil, seq), v); err != nil {
			return err
		}
	}
	return nil
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

// Query returns the newest records matching f, newest first.
func (l *Log) Query(f Filter) ([]Event, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	var out []Event
	err := l.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Last(); k != nil && len(out) < f.Limit; k, v = c.Prev() {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if (f.VIN == "" || e.VIN == f.VIN) && (f.User == "" || e.User == f.User) && (f.Kind == "" || e.Kind == f.Kind) &&
				(f.SinceMs == 0 || e.TsMs >= f.SinceMs) && (f.UntilMs == 0 || e.TsMs < f.UntilMs) {
				out = append(out, e)
			}
		}
		return nil
	})
	return out, err
}

// Count returns how many records the log holds.
func (l *Log) Count() (int, error) {
	var n int
	err := l.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketAudit).Stats().KeyN
		return nil
	})
	return n, err
}
