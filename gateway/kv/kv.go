// Package kv is the small transactional key-value interface the gateway's state is meant to
// move onto, so that one gateway keeps it in its bbolt file (package boltkv) and a cluster of
// replicas keeps it in etcd (package etcdkv) with the same code and the same guarantees.
//
// The shape follows the gateway's uses of bbolt: flat top-level buckets (meta, users,
// vehicles, twin, cmdids, audit, keys, shares, whitelists, journal, totp, totp_lockout,
// totp_meta), Get/Put/Delete, ascending scans of a key prefix from a start key, a per-bucket
// sequence (the audit log's keys), a hook run after commit (audit.Observe), and transactions
// that several packages write into (a Tx passed to store.AssignTx, audit.AppendTx, ...).
//
// Deliberately not offered, and what callers do instead:
//   - Nested buckets, CreateBucket/DeleteBucket: nobody nests; a bucket exists as soon as a key
//     is written to it and reads of a bucket never written see it empty.
//   - Reverse cursors (Last/Prev): etcd sorts a descending range by reading all of it, so the
//     audit log's newest-first query walks back from Sequence in ascending windows (its keys
//     are its sequence numbers) and Prune finds first and last the same way.
//   - Bucket.Stats (audit.Count): first key and Sequence give the count of a contiguous log.
//   - Tx.DB, db.Batch, pkg/groupcommit: Update is the only write; the bbolt implementation
//     shares commits through pkg/groupcommit, etcd commits each Update on its own.
//   - Long-lived values: a slice returned by Get or passed to a Scan callback is valid until
//     the transaction ends and must not be modified; copy what you keep.
//
// Update may run its function more than once: on etcd when another writer changed what it
// read (optimistic concurrency), on bbolt when a write sharing its group commit failed. So the
// function must be re-runnable: start from fresh state on each run, report results through
// variables it sets (not adds to), and do side effects (publish, notify) after Update returns
// or in OnCommit, which runs once, for the run that committed.
package kv

import (
	"bytes"
	"context"
	"errors"
)

// Store is a transactional key-value store.
type Store interface {
	// View runs fn in a read-only transaction that sees one consistent snapshot. Writes in it
	// fail with ErrReadOnly.
	View(ctx context.Context, fn func(Tx) error) error
	// Update runs fn in a serializable read-write transaction and returns once it is durable
	// (and, on etcd, acknowledged by a quorum). An error from fn rolls back everything fn
	// wrote and is returned as is. fn may run more than once (see the package comment).
	Update(ctx context.Context, fn func(Tx) error) error
	// Close releases the store; it is idempotent.
	Close() error
}

// Tx is one transaction. It is not safe for concurrent use: one goroutine runs it.
//
// Bucket names are non-empty and hold no '/' (they become key prefixes on etcd); keys are
// non-empty.
type Tx interface {
	// Get returns the value of key in bucket, or nil when there is none.
	Get(bucket, key []byte) ([]byte, error)
	// Put sets key to value in bucket (an empty value is stored as empty, not deleted).
	Put(bucket, key, value []byte) error
	// Delete removes key from bucket; deleting a missing key is not an error.
	Delete(bucket, key []byte) error
	// Scan calls fn for each key of bucket that starts with prefix and is not before from (nil:
	// from the first key of prefix), in ascending byte order, including this transaction's own
	// writes. fn returning Stop ends the scan without error; any other error ends it and is
	// returned. fn must not write to the store.
	Scan(bucket, prefix, from []byte, fn func(k, v []byte) error) error
	// NextSequence increments bucket's sequence and returns the new value (1 first). Like a
	// bbolt sequence it is gapless for committed transactions: a rolled back Update gives its
	// numbers back.
	NextSequence(bucket []byte) (uint64, error)
	// Sequence returns bucket's sequence: the last number NextSequence gave (0: none).
	Sequence(bucket []byte) (uint64, error)
	// SetSequence sets bucket's sequence to n, so that the next NextSequence gives n+1. For
	// copying a store (gateway store migrate), not for counting: 0 removes the sequence.
	SetSequence(bucket []byte, n uint64) error
	// OnCommit registers fn to run after the transaction commits, once; not for a run that
	// was rolled back or retried. In View it runs when View returns without error.
	OnCommit(fn func())
}

// IsShared reports whether s is written by several processes at once (etcdkv: gateway
// replicas), which it says by a method Shared() bool. Every key that all writers read and write
// (a counter) then makes their transactions conflict and run again, so data that every writer
// touches is better laid out per writer there (the audit log's inbox, package audit).
func IsShared(s Store) bool {
	sh, ok := s.(interface{ Shared() bool })
	return ok && sh.Shared()
}

// CopyScanner is a Store that keeps an in-memory copy of some buckets (etcdkv with
// Options.Cache). ScanCopy calls fn for the keys of bucket in that copy, in no particular
// order, and reports false when it keeps none of bucket (or is not ready).
type CopyScanner interface {
	ScanCopy(bucket []byte, fn func(k, v []byte) error) (ok bool, err error)
	// GetCopy is the value of key in that copy (nil: none); ok false as for ScanCopy.
	GetCopy(bucket, key []byte) (value []byte, ok bool)
}

// GetCandidate reads key of bucket from the store's in-memory copy when it keeps one
// (CopyScanner), else in a View. Like ScanCandidates it may be behind: for polling what a
// transaction then confirms. The value must not be modified.
func GetCandidate(ctx context.Context, s Store, bucket, key []byte) ([]byte, error) {
	if cs, ok := s.(CopyScanner); ok {
		if v, ok := cs.GetCopy(bucket, key); ok {
			return v, nil
		}
	}
	var v []byte
	err := s.View(ctx, func(tx Tx) error {
		got, err := tx.Get(bucket, key)
		v = bytes.Clone(got)
		return err
	})
	return v, err
}

// ScanCandidates calls fn for every key of bucket: from the store's in-memory copy when it
// keeps one (CopyScanner), else in a View, in key order. The copy may be behind: it is for
// housekeeping that confirms what it finds in a transaction before acting on it (a sweep of
// expired records), so that a periodic scan costs the shared store nothing. An etcd range
// read of a bucket whose keys come and go visits every key deleted since etcd's last
// compaction, which makes a frequent scan of a busy bucket grow with the compaction window.
// fn returning Stop ends the scan without error.
func ScanCandidates(ctx context.Context, s Store, bucket []byte, fn func(k, v []byte) error) error {
	if cs, ok := s.(CopyScanner); ok {
		if ok, err := cs.ScanCopy(bucket, fn); ok {
			return err
		}
	}
	return s.View(ctx, func(tx Tx) error { return tx.Scan(bucket, nil, nil, fn) })
}

// Sentinel errors.
var (
	// Stop, returned by a Scan callback, ends the scan early; Scan then returns nil.
	Stop = errors.New("stop scan")
	// ErrReadOnly is returned by a write inside View.
	ErrReadOnly = errors.New("write in a read-only transaction")
	// ErrUnavailable means the store could not be reached within its time bound (etcd down,
	// no quorum, network cut); the transaction did not commit, or, for a commit whose answer
	// was lost, may have: the store never runs such an Update again itself, and a caller that
	// does must make it idempotent (a request id it writes and checks first). Callers refuse
	// with `internal` and log the cause; /readyz reports the replica unready.
	ErrUnavailable = errors.New("store unavailable")
	// ErrConflict means an Update kept conflicting with other writers and gave up after its
	// bounded number of attempts; nothing was written.
	ErrConflict = errors.New("transaction conflicted too often")
	// ErrTooLarge means an Update read or wrote more keys than one etcd transaction carries
	// (etcd's --max-txn-ops); split the work into smaller transactions.
	ErrTooLarge = errors.New("transaction too large")
	// ErrBadName is returned for an empty key or an empty bucket name or one holding '/'.
	ErrBadName = errors.New("bad bucket or key name")
)

// CheckBucket returns ErrBadName unless bucket is a valid bucket name.
func CheckBucket(bucket []byte) error {
	if len(bucket) == 0 {
		return ErrBadName
	}
	for _, c := range bucket {
		if c == '/' {
			return ErrBadName
		}
	}
	return nil
}

// Check returns ErrBadName unless bucket and key are valid.
func Check(bucket, key []byte) error {
	if len(key) == 0 {
		return ErrBadName
	}
	return CheckBucket(bucket)
}
