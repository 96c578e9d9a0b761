// Package boltkv is kv.Store on a bbolt file, in the layout the gateway's packages use today:
// a kv bucket is a top-level bbolt bucket of the same name and a kv sequence is the bbolt
// bucket's own sequence, so moving a package from *bbolt.Tx to kv.Tx keeps its data on disk.
package boltkv

import (
	"bytes"
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/kv"
	"telematics/pkg/groupcommit"
)

// Store is kv.Store on a bbolt database. Updates share commits through pkg/groupcommit.
type Store struct {
	db     *bolt.DB
	commit *groupcommit.Committer
}

var _ kv.Store = (*Store)(nil)

// New serves db, which stays the caller's to close (after Close). The gateway passes the
// handle its store opened, so packages on kv and packages still on bbolt share the file
// during the move.
func New(db *bolt.DB) *Store {
	return &Store{db: db, commit: groupcommit.New(db)}
}

// View implements kv.Store.
func (s *Store) View(ctx context.Context, fn func(kv.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := &tx{}
	err := s.db.View(func(btx *bolt.Tx) error {
		t.btx = btx
		return fn(t)
	})
	if err == nil {
		for _, f := range t.onCommit {
			f()
		}
	}
	return err
}

// Update implements kv.Store. fn shares its bbolt transaction with other writers queued at the
// same moment; when one of them fails, the others run again without it.
func (s *Store) Update(ctx context.Context, fn func(kv.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.commit.Update(func(btx *bolt.Tx) error { return runTx(btx, fn) })
}

// UpdateLater queues fn to commit with the next Update, or within groupcommit.MaxLaterDelay,
// and returns without waiting for it; then, if not nil, gets the outcome once the commit is
// durable or failed (on the committing goroutine: it must be quick). fn is what Update takes.
// An update queued before Close is committed by Close.
func (s *Store) UpdateLater(fn func(kv.Tx) error, then func(error)) {
	s.commit.Enqueue(func(btx *bolt.Tx) error { return runTx(btx, fn) }, then)
}

// runTx runs fn in btx, the shared transaction, with its commit hooks.
func runTx(btx *bolt.Tx, fn func(kv.Tx) error) error {
	t := &tx{btx: btx, writable: true}
	if err := fn(t); err != nil {
		return err
	}
	// bbolt runs these only if the shared transaction commits.
	for _, f := range t.onCommit {
		btx.OnCommit(f)
	}
	return nil
}

// Close waits for queued updates; it does not close the bbolt file.
func (s *Store) Close() error {
	s.commit.Close()
	return nil
}

type tx struct {
	btx      *bolt.Tx
	writable bool
	onCommit []func()
}

func (t *tx) bucket(name []byte) (*bolt.Bucket, error) {
	if err := kv.CheckBucket(name); err != nil {
		return nil, err
	}
	if !t.writable {
		return t.btx.Bucket(name), nil
	}
	return t.btx.CreateBucketIfNotExists(name)
}

func (t *tx) Get(bucket, key []byte) ([]byte, error) {
	if err := kv.Check(bucket, key); err != nil {
		return nil, err
	}
	b := t.btx.Bucket(bucket)
	if b == nil {
		return nil, nil
	}
	return b.Get(key), nil
}

func (t *tx) Put(bucket, key, value []byte) error {
	if !t.writable {
		return kv.ErrReadOnly
	}
	if err := kv.Check(bucket, key); err != nil {
		return err
	}
	b, err := t.bucket(bucket)
	if err != nil {
		return err
	}
	if value == nil {
		value = []byte{}
	}
	return b.Put(key, value)
}

func (t *tx) Delete(bucket, key []byte) error {
	if !t.writable {
		return kv.ErrReadOnly
	}
	if err := kv.Check(bucket, key); err != nil {
		return err
	}
	b := t.btx.Bucket(bucket)
	if b == nil {
		return nil
	}
	return b.Delete(key)
}

func (t *tx) Scan(bucket, prefix, from []byte, fn func(k, v []byte) error) error {
	if err := kv.CheckBucket(bucket); err != nil {
		return err
	}
	b := t.btx.Bucket(bucket)
	if b == nil {
		return nil
	}
	start := prefix
	if bytes.Compare(from, start) > 0 {
		start = from
	}
	c := b.Cursor()
	var k, v []byte
	if len(start) == 0 {
		k, v = c.First()
	} else {
		k, v = c.Seek(start)
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if v == nil && b.Bucket(k) != nil {
			continue // a nested bucket: not kv's, skipped
		}
		if err := fn(k, v); err != nil {
			if err == kv.Stop {
				return nil
			}
			return err
		}
	}
	return nil
}

func (t *tx) NextSequence(bucket []byte) (uint64, error) {
	if !t.writable {
		return 0, kv.ErrReadOnly
	}
	b, err := t.bucket(bucket)
	if err != nil {
		return 0, err
	}
	n, err := b.NextSequence()
	if err != nil {
		return 0, fmt.Errorf("next sequence of %s: %w", bucket, err)
	}
	return n, nil
}

func (t *tx) Sequence(bucket []byte) (uint64, error) {
	if err := kv.CheckBucket(bucket); err != nil {
		return 0, err
	}
	b := t.btx.Bucket(bucket)
	if b == nil {
		return 0, nil
	}
	return b.Sequence(), nil
}

func (t *tx) SetSequence(bucket []byte, n uint64) error {
	if !t.writable {
		return kv.ErrReadOnly
	}
	b, err := t.bucket(bucket)
	if err != nil {
		return err
	}
	return b.SetSequence(n)
}

func (t *tx) OnCommit(fn func()) { t.onCommit = append(t.onCommit, fn) }
