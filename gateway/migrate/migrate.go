// Package migrate copies a single gateway's state from its bbolt file into a shared store
// (etcd) so that it can grow into a cluster of replicas without re-provisioning a car or
// re-enrolling a phone (`gateway store migrate`). It copies at the kv level: every top-level
// bucket, every key and each bucket's sequence, in transactions small enough for etcd, and
// checks the result by counts and checksums.
package migrate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/kv"
	"telematics/gateway/store"
)

// Sentinel errors.
var (
	// ErrSourceLocked means another process (a running gateway) holds the bbolt file.
	ErrSourceLocked = errors.New("the bbolt file is in use by another process")
	// ErrNotGateway means the source is not a gateway's bbolt file of this build's schema.
	ErrNotGateway = errors.New("not a gateway store")
	// ErrTargetNotEmpty means the target holds other data and Force was not set.
	ErrTargetNotEmpty = errors.New("the target is not empty")
	// ErrVerify means the target does not hold what the source does after copying.
	ErrVerify = errors.New("verification failed")
)

// Batch bounds: one Update carries at most maxBatchOps writes (etcd takes 128 operations per
// transaction by default, --max-txn-ops) and about maxBatchBytes of keys and values (etcd
// refuses a request over --max-request-bytes, 1.5 MiB by default).
const (
	maxBatchOps   = 100
	maxBatchBytes = 512 << 10
	// scanPage is how many target keys one View reads while looking for keys to remove or
	// computing a checksum: short Views, which etcd's compaction cannot fail.
	scanPage = 500
)

// Target is the store the state is copied into: a kv.Store that can say which buckets it
// holds (etcdkv.Store).
type Target interface {
	kv.Store
	Buckets(ctx context.Context) ([]string, error)
}

// Options configure Run.
type Options struct {
	// From is the path of the gateway's bbolt file (gateway.db).
	From string
	// To receives the copy. Run does not close it.
	To Target
	// Force overwrites a target that holds other data: afterwards it holds exactly the
	// source's buckets, keys and sequences.
	Force bool
	// LockTimeout bounds the wait for the bbolt file's lock (a running gateway holds it).
	// Default 1s.
	LockTimeout time.Duration
}

// Report is what Run did.
type Report struct {
	From    string   `json:"from"`
	Buckets []Bucket `json:"buckets"`
	Keys    int      `json:"keys"`
	// Written counts the keys and sequences written, Removed the target's keys and sequences
	// that the source does not have (only with Force).
	Written int `json:"written"`
	Removed int `json:"removed"`
	// AlreadyMigrated: the target held exactly the source's data before Run, which wrote
	// nothing (a second run).
	AlreadyMigrated bool `json:"already_migrated"`
	// Verified: after copying, every bucket's count, sequence and checksum in the target are
	// the source's.
	Verified bool `json:"verified"`
}

// Bucket is one bucket's content: its key count, its sequence and a SHA-256 over its keys
// and values in order.
type Bucket struct {
	Name     string `json:"name"`
	Keys     int    `json:"keys"`
	Sequence uint64 `json:"sequence"`
	Checksum string `json:"sha256"`
}

func (b Bucket) String() string {
	return fmt.Sprintf("%s (%d keys, sequence %d)", b.Name, b.Keys, b.Sequence)
}

// Run copies the gateway state in the bbolt file o.From into o.To and verifies the copy.
// Nothing may write to either while it runs: the source's lock keeps a gateway off the file;
// the replicas on the target must be stopped (a replica started on an empty target would
// initialize it, and Run then refuses it as not empty).
func Run(ctx context.Context, o Options) (Report, error) {
	if o.LockTimeout <= 0 {
		o.LockTimeout = time.Second
	}
	rep := Report{From: o.From}
	db, err := openSource(o.From, o.LockTimeout)
	if err != nil {
		return rep, err
	}
	defer db.Close()
	src, err := sourceBuckets(db)
	if err != nil {
		return rep, err
	}
	rep.Buckets = src
	for _, b := range src {
		rep.Keys += b.Keys
	}

	existing, err := o.To.Buckets(ctx)
	if err != nil {
		return rep, fmt.Errorf("list the target's buckets: %w", err)
	}
	if len(existing) > 0 {
		there, err := targetBuckets(ctx, o.To, existing)
		if err != nil {
			return rep, err
		}
		if slices.Equal(there, nonEmpty(src)) {
			rep.AlreadyMigrated, rep.Verified = true, true
			return rep, nil
		}
		if !o.Force {
			names := make([]string, len(there))
			for i, b := range there {
				names[i] = b.String()
			}
			return rep, fmt.Errorf("%w: it holds %s; run with --force to replace it with the source's state (stop every replica on it first)",
				ErrTargetNotEmpty, strings.Join(names, ", "))
		}
	}

	err = db.View(func(btx *bolt.Tx) error {
		for _, b := range src {
			n, err := copyBucket(ctx, btx.Bucket([]byte(b.Name)), []byte(b.Name), o.To)
			rep.Written += n
			if err != nil {
				return fmt.Errorf("copy bucket %s: %w", b.Name, err)
			}
		}
		for _, name := range existing {
			n, err := removeExtra(ctx, btx.Bucket([]byte(name)), []byte(name), o.To)
			rep.Removed += n
			if err != nil {
				return fmt.Errorf("clear bucket %s of the target: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return rep, err
	}

	existing, err = o.To.Buckets(ctx)
	if err != nil {
		return rep, fmt.Errorf("verify: list the target's buckets: %w", err)
	}
	there, err := targetBuckets(ctx, o.To, existing)
	if err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	if diff := difference(nonEmpty(src), there); diff != "" {
		return rep, fmt.Errorf("%w: %s", ErrVerify, diff)
	}
	rep.Verified = true
	return rep, nil
}

// openSource opens the bbolt file read-only. bbolt takes a shared lock for that, which waits
// for a running gateway's exclusive lock: hence the timeout and ErrSourceLocked.
func openSource(path string, lockTimeout time.Duration) (*bolt.DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("open the source: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s stayed locked for %v; stop the gateway that runs on it, then migrate",
				ErrSourceLocked, path, lockTimeout)
		}
		return nil, fmt.Errorf("open the source %s: %w", path, err)
	}
	return db, nil
}

// sourceBuckets reads every top-level bucket of the source, refusing what kv cannot hold (a
// nested bucket, a name with '/') and a file that is no gateway of this build's schema.
func sourceBuckets(db *bolt.DB) ([]Bucket, error) {
	var out []Bucket
	err := db.View(func(btx *bolt.Tx) error {
		meta := btx.Bucket([]byte("meta"))
		if meta == nil {
			return fmt.Errorf("%w: %s has no meta bucket", ErrNotGateway, db.Path())
		}
		v := meta.Get([]byte("schema_version"))
		if len(v) != 8 || binary.BigEndian.Uint64(v) != store.SchemaVersion {
			return fmt.Errorf("%w: %s has schema version %x, this build migrates %d", ErrNotGateway, db.Path(), v, store.SchemaVersion)
		}
		return btx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if err := kv.CheckBucket(name); err != nil {
				return fmt.Errorf("%w: bucket %q cannot be a kv bucket", ErrNotGateway, name)
			}
			sum := newSum()
			err := b.ForEach(func(k, v []byte) error {
				if v == nil {
					return fmt.Errorf("%w: bucket %s holds a nested bucket %q, which kv has no place for", ErrNotGateway, name, k)
				}
				sum.add(k, v)
				return nil
			})
			if err != nil {
				return err
			}
			out = append(out, sum.bucket(string(name), b.Sequence()))
			return nil
		})
	})
	return out, err
}

// targetBuckets reads the named buckets of the target, in pages of short Views.
func targetBuckets(ctx context.Context, s kv.Store, names []string) ([]Bucket, error) {
	out := make([]Bucket, 0, len(names))
	for _, name := range names {
		sum := newSum()
		var seq uint64
		err := pages(ctx, s, []byte(name), func(tx kv.Tx, k, v []byte) error {
			sum.add(k, v)
			return nil
		}, func(tx kv.Tx) (err error) {
			seq, err = tx.Sequence([]byte(name))
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("read bucket %s of the target: %w", name, err)
		}
		out = append(out, sum.bucket(name, seq))
	}
	slices.SortFunc(out, func(a, b Bucket) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// pages calls fn for every key of bucket, scanPage keys per View; first runs in the first View.
func pages(ctx context.Context, s kv.Store, bucket []byte, fn func(tx kv.Tx, k, v []byte) error, first func(kv.Tx) error) error {
	var from []byte
	for {
		var n int
		var last []byte
		err := s.View(ctx, func(tx kv.Tx) error {
			n, last = 0, nil
			if first != nil {
				if err := first(tx); err != nil {
					return err
				}
			}
			return tx.Scan(bucket, nil, from, func(k, v []byte) error {
				n++
				last = bytes.Clone(k)
				if err := fn(tx, k, v); err != nil {
					return err
				}
				if n == scanPage {
					return kv.Stop
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
		if n < scanPage {
			return nil
		}
		first, from = nil, append(last, 0)
	}
}

// copyBucket writes every key of src and its sequence into the target, in batches; it returns
// how many keys and sequences it wrote.
func copyBucket(ctx context.Context, src *bolt.Bucket, name []byte, to kv.Store) (int, error) {
	var keys, values [][]byte
	size, written := 0, 0
	flush := func(seq bool) error {
		err := to.Update(ctx, func(tx kv.Tx) error {
			for i := range keys {
				if err := tx.Put(name, keys[i], values[i]); err != nil {
					return err
				}
			}
			if seq {
				return tx.SetSequence(name, src.Sequence())
			}
			return nil
		})
		if err != nil {
			return err
		}
		written += len(keys)
		if seq && src.Sequence() != 0 {
			written++
		}
		keys, values, size = keys[:0], values[:0], 0
		return nil
	}
	// Keys and values stay valid: the bbolt read transaction outlives every flush.
	err := src.ForEach(func(k, v []byte) error {
		if len(keys) == maxBatchOps || len(keys) > 0 && size+len(k)+len(v) > maxBatchBytes {
			if err := flush(false); err != nil {
				return err
			}
		}
		keys, values = append(keys, k), append(values, v)
		size += len(k) + len(v)
		return nil
	})
	if err != nil {
		return written, err
	}
	return written, flush(true)
}

// removeExtra deletes the target's keys of bucket that the source (src, nil when the source
// has no such bucket) does not hold, and its sequence when the source has none.
func removeExtra(ctx context.Context, src *bolt.Bucket, name []byte, to kv.Store) (int, error) {
	var extra [][]byte
	err := pages(ctx, to, name, func(_ kv.Tx, k, _ []byte) error {
		if src == nil || src.Get(k) == nil {
			extra = append(extra, bytes.Clone(k))
		}
		return nil
	}, nil)
	if err != nil {
		return 0, err
	}
	removed := 0
	for len(extra) > 0 {
		batch := extra[:min(len(extra), maxBatchOps)]
		err := to.Update(ctx, func(tx kv.Tx) error {
			for _, k := range batch {
				if err := tx.Delete(name, k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return removed, err
		}
		removed += len(batch)
		extra = extra[len(batch):]
	}
	if src == nil {
		var seq uint64
		if err := to.View(ctx, func(tx kv.Tx) (err error) { seq, err = tx.Sequence(name); return err }); err != nil {
			return removed, err
		}
		if seq != 0 {
			if err := to.Update(ctx, func(tx kv.Tx) error { return tx.SetSequence(name, 0) }); err != nil {
				return removed, err
			}
			removed++
		}
	}
	return removed, nil
}

// nonEmpty drops the buckets with neither a key nor a sequence: bbolt keeps an empty bucket,
// kv has no such thing (a bucket exists once written).
func nonEmpty(bs []Bucket) []Bucket {
	return slices.DeleteFunc(slices.Clone(bs), func(b Bucket) bool { return b.Keys == 0 && b.Sequence == 0 })
}

// difference says how want and got differ ("" when they are equal).
func difference(want, got []Bucket) string {
	byName := map[string]Bucket{}
	for _, b := range got {
		byName[b.Name] = b
	}
	var diffs []string
	for _, w := range want {
		g, ok := byName[w.Name]
		delete(byName, w.Name)
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("bucket %s missing in the target", w))
		case g != w:
			diffs = append(diffs, fmt.Sprintf("bucket %s in the source, %d keys, sequence %d, checksum %.12s… in the target (source %.12s…)",
				w, g.Keys, g.Sequence, g.Checksum, w.Checksum))
		}
	}
	for _, g := range got {
		if _, ok := byName[g.Name]; ok {
			diffs = append(diffs, fmt.Sprintf("bucket %s in the target only", g))
		}
	}
	return strings.Join(diffs, "; ")
}

// sum is a bucket's running count and checksum: SHA-256 over each key and value, each
// preceded by its length, in ascending key order (bbolt's and kv's order alike).
type sum struct {
	h hash.Hash
	n int
}

func newSum() *sum { return &sum{h: sha256.New()} }

func (s *sum) add(k, v []byte) {
	var l [binary.MaxVarintLen64]byte
	s.h.Write(l[:binary.PutUvarint(l[:], uint64(len(k)))])
	s.h.Write(k)
	s.h.Write(l[:binary.PutUvarint(l[:], uint64(len(v)))])
	s.h.Write(v)
	s.n++
}

func (s *sum) bucket(name string, seq uint64) Bucket {
	return Bucket{Name: name, Keys: s.n, Sequence: seq, Checksum: hex.EncodeToString(s.h.Sum(nil))}
}
