// Package etcdkv is kv.Store on etcd, for gateway replicas that share their state.
//
// Layout: a bucket's key k is PREFIX+"b/"+bucket+"/"+k, its sequence PREFIX+"s/"+bucket (an
// 8-byte big-endian number), so a bucket is one contiguous key range and scans never see a
// sequence.
//
// Transactions are optimistic and serializable. A transaction reads one snapshot: its first
// read is linearizable and fixes the revision, every later read asks for that revision. It
// records the mod revision of every key it read and every key range it scanned, buffers its
// writes, and commits them in one etcd Txn that compares those mod revisions (a key read, or
// scanned, still has the one seen; no key in a scanned range changed or appeared after the
// snapshot). When another writer got there first the Txn fails and Update runs fn again on a
// new snapshot, a bounded number of times (Options.MaxAttempts) within a bounded time
// (Options.Timeout).
//
// Options.Cache names buckets ("*": all) whose point reads in an Update cost no RPC, because
// each etcd RPC costs milliseconds on a loaded host and a decision makes several in a row. A
// goroutine of the Store loads those buckets' keys and sequences at one revision, then
// follows their changes with watches (and loads again, after a bounded wait, whenever a watch
// breaks); the Store's own commits go into it at once, so that its next Update does not read
// its own last write stale. On the first run of an Update's function, Get and
// Sequence/NextSequence of a cached bucket read that copy and record the key's mod revision
// as any read does. Views and scans never use it. A cached read may be stale, which is
// harmless: nothing based on it is returned before etcd confirmed it. A commit compares every
// read key's mod revision as always; an Update that wrote nothing, or whose function returned
// an error, sends the compares alone (a Txn without writes); a key read twice at two mod
// revisions fails at once. When that confirmation fails the function runs again at once on
// etcd's own reads (one run more, not counted in MaxAttempts). So a first run may see values
// that never were together in one revision: a function must not panic on such a pair (an
// error it returns is confirmed before it is believed). The cache costs memory for all the
// cached buckets' keys and values, a watch event for every write to them (and to any
// sequence), and, for an Update that used it and wrote nothing, one Txn in place of its
// reads. Store.CacheStats counts hits, misses (cache not ready), stale reruns and reloads.
//
// concurrency.NewSTM (serializable snapshot) was evaluated and not used: it has no range
// reads, so scans (a car's keys, the journal, the audit log) would be unprotected against
// phantoms; it retries without bound; its Get returns a string that cannot tell an absent key
// from an empty value; and it reports errors by panicking in a goroutine of its own. The
// algorithm here is the same idea (snapshot reads at the first read's revision, mod revision
// compares at commit), extended with range compares.
package etcdkv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"telematics/gateway/kv"
)

// Options configure a Store. Zero fields take the defaults.
type Options struct {
	// Endpoints are the etcd members' client URLs (http://host:2379).
	Endpoints []string
	// Prefix is put before every key, so several gateways (or tests) can share one etcd.
	// Default "/telematics/".
	Prefix string
	// Timeout bounds one View or Update with all its attempts. Default 5s.
	Timeout time.Duration
	// DialTimeout bounds connecting. Default 2s.
	DialTimeout time.Duration
	// MaxAttempts bounds how often Update runs fn when it conflicts. Default 32.
	MaxAttempts int
	// MaxTxnOps is the etcd server's --max-txn-ops (compares, and writes, per Txn); a larger
	// transaction fails with kv.ErrTooLarge before it is sent. Default 128, etcd's default.
	MaxTxnOps int
	// PageSize is how many keys a scan, or the cache's load, reads per request. Default 256.
	PageSize int
	// Cache names the buckets whose keys and sequence an Update reads from a copy in memory
	// that a watch keeps current (see the package comment); "*" is every bucket of Prefix.
	// Empty: no cache, every read asks etcd.
	Cache []string
}

func (o *Options) defaults() {
	if o.Prefix == "" {
		o.Prefix = "/telematics/"
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 2 * time.Second
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 32
	}
	if o.MaxTxnOps <= 0 {
		o.MaxTxnOps = 128
	}
	if o.PageSize <= 0 {
		o.PageSize = 256
	}
}

// Store is kv.Store on etcd.
type Store struct {
	cli  *clientv3.Client
	opts Options
	// retrying is held (capacity 1) by the one Update of this process that runs an attempt
	// after a conflict. N concurrent writers of one hot key conflict with each other and only
	// one wins a round; racing again, a loser could lose all its attempts (seen with 20
	// parallel enrollments on a loaded machine, when every audited write still bumped the
	// audit sequence). In line, the losers of this process win in turn and only race the
	// other replicas' writers and this process's first attempts.
	retrying chan struct{}
	cache    *cache // nil without Options.Cache
}

var _ kv.Store = (*Store)(nil)

// Open connects to etcd. It does not wait for a member to answer: the first transaction
// does, within Options.Timeout.
func Open(o Options) (*Store, error) {
	o.defaults()
	if len(o.Endpoints) == 0 {
		return nil, errors.New("etcd store: no endpoints")
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   o.Endpoints,
		DialTimeout: o.DialTimeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd store %s: %w", strings.Join(o.Endpoints, ","), err)
	}
	s := &Store{cli: cli, opts: o, retrying: make(chan struct{}, 1)}
	if len(o.Cache) > 0 {
		if s.cache, err = newCache(cli, o); err != nil {
			cli.Close()
			return nil, err
		}
	}
	return s, nil
}

// Shared reports true: the store is meant for several gateway replicas (kv.IsShared).
func (s *Store) Shared() bool { return true }

// Close stops the cache's goroutine, if any, and closes the client; it is idempotent.
func (s *Store) Close() error {
	if s.cache != nil {
		s.cache.stop()
		<-s.cache.done
	}
	err := s.cli.Close()
	if errors.Is(err, context.Canceled) {
		return nil // a second Close
	}
	return err
}

// View implements kv.Store: fn reads one snapshot.
func (s *Store) View(ctx context.Context, fn func(kv.Tx) error) error {
	ctx, cancel := context.WithTimeoutCause(ctx, s.opts.Timeout, errTimeout)
	defer cancel()
	t := s.newTx(ctx, false)
	if err := fn(t); err != nil {
		return err
	}
	for _, f := range t.onCommit {
		f()
	}
	return nil
}

// Update implements kv.Store.
func (s *Store) Update(ctx context.Context, fn func(kv.Tx) error) error {
	ctx, cancel := context.WithTimeoutCause(ctx, s.opts.Timeout, errTimeout)
	defer cancel()
	inLine := false
	defer func() {
		if inLine {
			<-s.retrying
		}
	}()
	useCache := s.cache != nil // on the first run only
	for attempt := 1; ; attempt++ {
		t := s.newTx(ctx, true)
		t.useCache, useCache = useCache, false
		err := fn(t)
		if err == nil {
			err = t.commit()
			if err == nil {
				for _, f := range t.onCommit {
					f()
				}
				return nil
			}
		} else if t.usedCache && !errors.Is(err, errRetry) && !errors.Is(err, kv.ErrUnavailable) {
			// The error may come from a stale read: it stands once the reads are confirmed.
			if cerr := t.confirm(); cerr != nil {
				err = cerr
			}
		}
		if t.usedCache && errors.Is(err, errRetry) {
			// Cached reads not confirmed: the cache was behind, or another writer changed a
			// key after it (not told apart). Run fn again at once on etcd's reads, as the same
			// attempt and outside the retrying line, which is for writers that conflict on
			// etcd's own reads; a second failure goes through both.
			s.cache.stale.Add(1)
			attempt--
			continue
		}
		if errors.Is(err, errRetry) && !inLine {
			select {
			case s.retrying <- struct{}{}:
				inLine = true
			case <-ctx.Done():
				return s.unavailable(ctx, ctx.Err())
			}
		}
		if !errors.Is(err, errRetry) {
			return err
		}
		if attempt >= s.opts.MaxAttempts {
			return fmt.Errorf("%w: %d attempts", kv.ErrConflict, attempt)
		}
		// Jittered backoff, so writers of one hot key do not meet again at once.
		d := time.Duration(rand.Int64N(int64(time.Millisecond) << min(attempt, 6)))
		timer := time.NewTimer(d)
		select {
		case <-ctx.Done():
			timer.Stop()
			return s.unavailable(ctx, ctx.Err())
		case <-timer.C:
		}
	}
}

// Buckets returns the names of the buckets under the store's prefix that hold a key or a
// sequence, sorted: kv has no bucket list (a bucket exists once written), and the migration
// tool must say what a target it refuses already holds. One read per bucket, not per key.
func (s *Store) Buckets(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, s.opts.Timeout, errTimeout)
	defer cancel()
	names := map[string]bool{}
	for _, part := range []string{"b/", "s/"} {
		base := s.opts.Prefix + part
		end := clientv3.GetPrefixRangeEnd(base)
		for from := base; from < end; {
			resp, err := s.cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(1), clientv3.WithKeysOnly())
			if err != nil {
				return nil, s.unavailable(ctx, err)
			}
			if len(resp.Kvs) == 0 {
				break
			}
			name, _, _ := strings.Cut(string(resp.Kvs[0].Key)[len(base):], "/")
			names[name] = true
			if part == "s/" {
				from = string(resp.Kvs[0].Key) + "\x00"
			} else {
				from = base + name + "0" // '0' follows '/': the first key after this bucket
			}
		}
	}
	return slices.Sorted(maps.Keys(names)), nil
}

// errRetry marks a failed attempt that Update runs again: a conflict, or a snapshot compacted
// away under it.
var errRetry = errors.New("retry")

// errTimeout is the cause of a View's or Update's context when its time bound passed.
var errTimeout = errors.New("etcd store time bound")

// unavailable wraps an etcd error: one that comes from the time bound or an unreachable
// cluster is kv.ErrUnavailable; the caller's own cancellation is returned as such.
func (s *Store) unavailable(ctx context.Context, err error) error {
	if ctx.Err() != nil && context.Cause(ctx) != errTimeout {
		return fmt.Errorf("etcd store: %w", context.Cause(ctx))
	}
	// The server's own time-outs (no quorum to commit, a leader lost mid-request) can come
	// back before the client's bound: unavailable too.
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrNoLeader) ||
		errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) || errors.Is(err, rpctypes.ErrLeaderChanged) ||
		status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded {
		return fmt.Errorf("%w: etcd at %s did not answer within %v: %v", kv.ErrUnavailable,
			strings.Join(s.opts.Endpoints, ","), s.opts.Timeout, err)
	}
	return fmt.Errorf("etcd: %w", err)
}

func (s *Store) newTx(ctx context.Context, writable bool) *tx {
	return &tx{s: s, ctx: ctx, writable: writable, reads: map[string]int64{}, writes: map[string]*[]byte{}}
}

func (s *Store) dataKey(bucket, key []byte) string {
	return s.opts.Prefix + "b/" + string(bucket) + "/" + string(key)
}

func (s *Store) bucketPrefix(bucket []byte) string {
	return s.opts.Prefix + "b/" + string(bucket) + "/"
}

func (s *Store) seqKey(bucket []byte) string { return s.opts.Prefix + "s/" + string(bucket) }

// span is a scanned key range [start, end).
type span struct{ start, end string }

type tx struct {
	s         *Store
	ctx       context.Context
	writable  bool
	useCache  bool             // point reads of cached buckets may come from s.cache
	usedCache bool             // some did: commit must confirm them even without writes
	torn      bool             // a key was read twice with different mod revisions (one from the cache)
	rev       int64            // the snapshot; 0 until the first read from etcd (never, if all came from the cache)
	reads     map[string]int64 // key -> mod revision seen (0: absent)
	spans     []span
	writes    map[string]*[]byte // key -> value; nil: deleted
	onCommit  []func()
}

// get reads from the snapshot (fixing it on the first read).
func (t *tx) get(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if t.rev != 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	resp, err := t.s.cli.Get(t.ctx, key, opts...)
	if err != nil {
		if errors.Is(err, rpctypes.ErrCompacted) && t.writable {
			return nil, fmt.Errorf("%w: snapshot %d compacted", errRetry, t.rev)
		}
		return nil, t.s.unavailable(t.ctx, err)
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	return resp, nil
}

func (t *tx) getKey(key string) ([]byte, error) {
	if v, ok := t.writes[key]; ok {
		if v == nil {
			return nil, nil
		}
		return *v, nil
	}
	if t.useCache {
		if v, mod, ok := t.s.cache.get(key); ok {
			t.usedCache = true
			t.read(key, mod)
			return v, nil
		}
	}
	resp, err := t.get(key)
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		t.read(key, 0)
		return nil, nil
	}
	t.read(key, resp.Kvs[0].ModRevision)
	v := resp.Kvs[0].Value
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

// read records what an Update's commit must compare; a View commits nothing and records
// nothing (a scan of a large bucket would fill memory for no use).
func (t *tx) read(key string, mod int64) {
	if !t.writable {
		return
	}
	if old, ok := t.reads[key]; ok && old != mod {
		t.torn = true // only with the cache: etcd's reads are all of one snapshot
	}
	t.reads[key] = mod
}

func (t *tx) put(key string, value []byte) error {
	if !t.writable {
		return kv.ErrReadOnly
	}
	v := bytes.Clone(value)
	if v == nil {
		v = []byte{}
	}
	t.writes[key] = &v
	return nil
}

func (t *tx) Get(bucket, key []byte) ([]byte, error) {
	if err := kv.Check(bucket, key); err != nil {
		return nil, err
	}
	return t.getKey(t.s.dataKey(bucket, key))
}

func (t *tx) Put(bucket, key, value []byte) error {
	if err := kv.Check(bucket, key); err != nil {
		return err
	}
	return t.put(t.s.dataKey(bucket, key), value)
}

func (t *tx) Delete(bucket, key []byte) error {
	if !t.writable {
		return kv.ErrReadOnly
	}
	if err := kv.Check(bucket, key); err != nil {
		return err
	}
	t.writes[t.s.dataKey(bucket, key)] = nil
	return nil
}

func (t *tx) NextSequence(bucket []byte) (uint64, error) {
	if !t.writable {
		return 0, kv.ErrReadOnly
	}
	n, err := t.Sequence(bucket)
	if err != nil {
		return 0, err
	}
	n++
	return n, t.put(t.s.seqKey(bucket), binary.BigEndian.AppendUint64(nil, n))
}

func (t *tx) Sequence(bucket []byte) (uint64, error) {
	if err := kv.CheckBucket(bucket); err != nil {
		return 0, err
	}
	v, err := t.getKey(t.s.seqKey(bucket))
	if err != nil || v == nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("sequence of %s: %d bytes, want 8", bucket, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func (t *tx) SetSequence(bucket []byte, n uint64) error {
	if !t.writable {
		return kv.ErrReadOnly
	}
	if err := kv.CheckBucket(bucket); err != nil {
		return err
	}
	if n == 0 {
		t.writes[t.s.seqKey(bucket)] = nil
		return nil
	}
	return t.put(t.s.seqKey(bucket), binary.BigEndian.AppendUint64(nil, n))
}

func (t *tx) OnCommit(fn func()) { t.onCommit = append(t.onCommit, fn) }

type pair struct {
	key   string
	value []byte
	mod   int64 // 0: from this transaction's writes
}

// Scan reads the range page by page at the snapshot, merges this transaction's writes into
// each page, and records the part of the range it went through (up to where fn stopped).
func (t *tx) Scan(bucket, prefix, from []byte, fn func(k, v []byte) error) error {
	if err := kv.CheckBucket(bucket); err != nil {
		return err
	}
	bp := t.s.bucketPrefix(bucket)
	start := bp + string(prefix)
	end := clientv3.GetPrefixRangeEnd(start)
	if bytes.Compare(from, prefix) > 0 {
		start = bp + string(from)
	}
	if start >= end {
		return nil
	}
	covered := start // the scan went through [start, covered)
	defer func() {
		if covered > start && t.writable {
			t.spans = append(t.spans, span{start, covered})
		}
	}()
	for pageStart := start; ; {
		resp, err := t.get(pageStart, clientv3.WithRange(end), clientv3.WithLimit(int64(t.s.opts.PageSize)))
		if err != nil {
			return err
		}
		pageEnd := end
		if resp.More && len(resp.Kvs) > 0 {
			pageEnd = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		page := make([]pair, 0, len(resp.Kvs))
		for _, p := range resp.Kvs {
			page = append(page, pair{key: string(p.Key), value: p.Value, mod: p.ModRevision})
		}
		page = t.merge(page, pageStart, pageEnd)
		for _, p := range page {
			covered = p.key + "\x00"
			if p.mod != 0 {
				t.read(p.key, p.mod)
			}
			v := p.value
			if v == nil {
				v = []byte{}
			}
			if err := fn([]byte(p.key[len(bp):]), v); err != nil {
				if err == kv.Stop {
					return nil
				}
				return err
			}
		}
		covered = pageEnd
		if pageEnd == end {
			return nil
		}
		pageStart = pageEnd
	}
}

// merge applies this transaction's writes within [lo, hi) to a page read from the snapshot.
func (t *tx) merge(page []pair, lo, hi string) []pair {
	var mine []string
	for k := range t.writes {
		if k >= lo && (hi == "" || k < hi) {
			mine = append(mine, k)
		}
	}
	if len(mine) == 0 {
		return page
	}
	byKey := make(map[string]pair, len(page)+len(mine))
	for _, p := range page {
		byKey[p.key] = p
	}
	for _, k := range mine {
		if v := t.writes[k]; v == nil {
			delete(byKey, k)
		} else {
			byKey[k] = pair{key: k, value: *v}
		}
	}
	out := make([]pair, 0, len(byKey))
	for _, p := range byKey {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b pair) int { return strings.Compare(a.key, b.key) })
	return out
}

// commit sends the buffered writes in one Txn guarded by the read set. A transaction that
// wrote nothing has nothing to commit when its reads were one snapshot of etcd's; when some
// came from the cache it has them confirmed.
func (t *tx) commit() error {
	if len(t.writes) == 0 {
		if t.usedCache {
			return t.confirm()
		}
		return nil
	}
	ops := make([]clientv3.Op, 0, len(t.writes))
	for k, v := range t.writes {
		if v == nil {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, string(*v)))
		}
	}
	resp, err := t.txn(ops)
	if err != nil {
		return err
	}
	if t.s.cache != nil {
		t.s.cache.wrote(resp.Header.Revision, t.writes)
	}
	return nil
}

// confirm checks, with a Txn of the compares alone, that every key read still has the mod
// revision seen (so cached reads were current) and no scanned range changed.
func (t *tx) confirm() error {
	_, err := t.txn(nil)
	return err
}

// txn sends ops guarded by the read set.
func (t *tx) txn(ops []clientv3.Op) (*clientv3.TxnResponse, error) {
	if t.torn {
		return nil, fmt.Errorf("%w: a key changed between two reads of it (the cache was behind)", errRetry)
	}
	var cmps []clientv3.Cmp
	for k, mod := range t.reads {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", mod))
	}
	for _, sp := range t.spans {
		// Catches a key changed or created in the range after the snapshot; a key deleted
		// from it is caught by the compare of that key above. A scan read from etcd, so
		// t.rev is set.
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(sp.start), "<", t.rev+1).WithRange(sp.end))
	}
	if len(cmps) > t.s.opts.MaxTxnOps || len(ops) > t.s.opts.MaxTxnOps {
		if len(ops) == 0 {
			// Cached reads that one Txn cannot confirm: run again on etcd's reads, which a
			// transaction without writes needs not confirm.
			return nil, fmt.Errorf("%w: %d reads, more than one transaction compares", errRetry, len(cmps))
		}
		return nil, fmt.Errorf("%w: %d reads and %d writes, etcd takes at most %d of each per transaction (--max-txn-ops)",
			kv.ErrTooLarge, len(cmps), len(ops), t.s.opts.MaxTxnOps)
	}
	resp, err := t.s.cli.Txn(t.ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return nil, t.s.unavailable(t.ctx, err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("%w: conflict at revision %d", errRetry, t.rev)
	}
	return resp, nil
}
