package etcdkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"telematics/gateway/kv"
)

// CacheStats counts the work of the read cache (Options.Cache) since Open; all zero without
// one.
type CacheStats struct {
	// Ready: the cache is loaded and following etcd's changes now.
	Ready bool
	// Hits are point reads of an Update served from the cache, without an RPC.
	Hits uint64
	// Misses are point reads of a cached bucket sent to etcd because the cache was not ready
	// (loading, or reloading after its watch broke).
	Misses uint64
	// StaleReruns are Updates whose cached reads etcd did not confirm (the cache was behind,
	// or another writer changed a key in between: the two are not told apart) and that ran
	// their function again without the cache.
	StaleReruns uint64
	// Reloads are loads of the cached buckets: the first, and one after each broken watch.
	Reloads uint64
}

// CacheStats returns the read cache's counters.
func (s *Store) CacheStats() CacheStats {
	c := s.cache
	if c == nil {
		return CacheStats{}
	}
	c.mu.RLock()
	ready := c.ready
	c.mu.RUnlock()
	return CacheStats{Ready: ready, Hits: c.hits.Load(), Misses: c.misses.Load(),
		StaleReruns: c.stale.Load(), Reloads: c.reloads.Load()}
}

// Bounds of the wait between two loads of the cache after a failure.
const (
	minReload = 100 * time.Millisecond
	maxReload = 10 * time.Second
)

// cache holds the current value and mod revision of every key of the cached buckets (and of
// their sequences), loaded at one revision and kept current by watches from the next.
type cache struct {
	cli      *clientv3.Client
	prefix   string
	all      bool            // Options.Cache holds "*"
	buckets  map[string]bool // else these
	pageSize int
	timeout  time.Duration // bounds a load
	ranges   []*keyRange   // loaded and watched; each key of them that covers() is cached

	mu        sync.RWMutex
	ready     bool
	m         map[string]entry
	stopWatch context.CancelFunc // the current watches' (a test breaks them)

	// hold is held while a watch response is applied. Tests hold it to make the cache stale.
	hold sync.Mutex

	hits, misses, stale, reloads atomic.Uint64
	stop                         context.CancelFunc
	done                         chan struct{}
}

type entry struct {
	value []byte // never modified: replaced by a new slice on a change
	mod   int64
}

// keyRange is [start, end); rev is the revision its watch has delivered up to (under mu).
type keyRange struct {
	start, end string
	rev        int64
}

func newCache(cli *clientv3.Client, o Options) (*cache, error) {
	c := &cache{cli: cli, prefix: o.Prefix, buckets: map[string]bool{}, pageSize: o.PageSize,
		timeout: o.Timeout, done: make(chan struct{})}
	for _, name := range o.Cache {
		if name == "*" {
			c.all = true
		} else if err := kv.CheckBucket([]byte(name)); err != nil {
			return nil, fmt.Errorf("etcd store: cached bucket %q: %w", name, err)
		}
		c.buckets[name] = true
	}
	add := func(start string) {
		c.ranges = append(c.ranges, &keyRange{start: start, end: clientv3.GetPrefixRangeEnd(start)})
	}
	if c.all {
		add(o.Prefix + "b/")
		add(o.Prefix + "s/") // every sequence (one key a bucket)
	} else {
		for name := range c.buckets {
			add(o.Prefix + "b/" + name + "/")
			// The bucket's sequence key alone: a watch of all of s/ would bring every other
			// bucket's sequence changes too (the audit log's, at each move of its inbox).
			seq := o.Prefix + "s/" + name
			c.ranges = append(c.ranges, &keyRange{start: seq, end: seq + "\x00"})
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	c.stop = stop
	go c.run(ctx)
	return c, nil
}

// covers reports whether key is a key or the sequence of a cached bucket.
func (c *cache) covers(key string) bool {
	rest, ok := strings.CutPrefix(key, c.prefix)
	if !ok {
		return false
	}
	if name, ok := strings.CutPrefix(rest, "b/"); ok {
		name, _, _ = strings.Cut(name, "/")
		return c.all || c.buckets[name]
	}
	if name, ok := strings.CutPrefix(rest, "s/"); ok {
		return c.all || c.buckets[name]
	}
	return false
}

// get returns key's cached value (nil: absent) and mod revision (0: absent); ok is false
// when key is not cached or the cache is not ready.
func (c *cache) get(key string) (value []byte, mod int64, ok bool) {
	if !c.covers(key) {
		return nil, 0, false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.ready {
		c.misses.Add(1)
		return nil, 0, false
	}
	c.hits.Add(1)
	e := c.m[key]
	return e.value, e.mod, true
}

// wrote applies a commit of this Store at revision rev to the cache before its watch event
// arrives, so that the next Update of this replica on the same keys does not read them stale.
// A range whose watch is already at rev or past it is left to the watch.
func (c *cache) wrote(rev int64, writes map[string]*[]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ready {
		return
	}
	for k, v := range writes {
		if !c.covers(k) {
			continue
		}
		for _, r := range c.ranges {
			if k >= r.start && k < r.end {
				if r.rev < rev {
					var val []byte // nil: deleted
					if v != nil {
						val = clone(*v)
					}
					c.set(k, val, rev)
				}
				break
			}
		}
	}
}

// set records key's value at revision mod (v nil: deleted), unless the cache has a later one.
// v is the cache's own: a copy nobody modifies.
func (c *cache) set(key string, v []byte, mod int64) {
	if old, ok := c.m[key]; ok && old.mod >= mod {
		return
	}
	if v == nil {
		delete(c.m, key)
		return
	}
	c.m[key] = entry{value: v, mod: mod}
}

// run keeps the cache loaded and current until Close, loading it again (after a bounded,
// growing wait) whenever a load or a watch fails.
func (c *cache) run(ctx context.Context) {
	defer close(c.done)
	delay := minReload
	for {
		began := time.Now()
		_ = c.follow(ctx) // any failure means: load again; CacheStats tells how often
		c.mu.Lock()
		c.ready, c.m = false, nil
		c.mu.Unlock()
		if time.Since(began) > maxReload {
			delay = minReload // it had been working: not a failure in a row
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		delay = min(2*delay, maxReload)
	}
}

type watched struct {
	r      *keyRange
	resp   clientv3.WatchResponse
	closed bool
}

// follow loads the cached ranges at one revision, then applies their watches' events from
// the next revision on, until a watch fails or ctx ends.
func (c *cache) follow(ctx context.Context) error {
	c.reloads.Add(1)
	m := map[string]entry{}
	rev, err := c.load(ctx, m)
	if err != nil {
		return err
	}
	// Without a leader a member's watch is cut off from new writes: end it and load again.
	wctx, stopWatch := context.WithCancel(clientv3.WithRequireLeader(ctx))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopWatch()
	c.mu.Lock()
	c.m, c.ready, c.stopWatch = m, true, stopWatch
	for _, r := range c.ranges {
		r.rev = rev
	}
	c.mu.Unlock()
	events := make(chan watched)
	for _, r := range c.ranges {
		wch := c.cli.Watch(wctx, r.start, clientv3.WithRange(r.end), clientv3.WithRev(rev+1),
			clientv3.WithProgressNotify())
		wg.Go(func() {
			for resp := range wch {
				select {
				case events <- watched{r: r, resp: resp}:
				case <-wctx.Done():
					return
				}
			}
			select {
			case events <- watched{r: r, closed: true}:
			case <-wctx.Done():
			}
		})
	}
	for {
		select {
		case <-wctx.Done():
			return wctx.Err()
		case w := <-events:
			if w.closed {
				return errors.New("etcd store cache: watch closed")
			}
			if err := w.resp.Err(); err != nil {
				return fmt.Errorf("etcd store cache: watch of %s: %w", w.r.start, err)
			}
			c.hold.Lock()
			c.apply(w.r, w.resp)
			c.hold.Unlock()
		}
	}
}

// load reads the cached ranges into m, page by page at one revision, which it returns.
func (c *cache) load(ctx context.Context, m map[string]entry) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rev int64
	for _, r := range c.ranges {
		for from := r.start; ; {
			opts := []clientv3.OpOption{clientv3.WithRange(r.end), clientv3.WithLimit(int64(c.pageSize))}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := c.cli.Get(ctx, from, opts...)
			if err != nil {
				return 0, fmt.Errorf("etcd store cache: load %s: %w", from, err)
			}
			if rev == 0 {
				rev = resp.Header.Revision
			}
			for _, p := range resp.Kvs {
				if k := string(p.Key); c.covers(k) {
					m[k] = entry{value: clone(p.Value), mod: p.ModRevision}
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	return rev, nil
}

func (c *cache) apply(r *keyRange, resp clientv3.WatchResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range resp.Events {
		k := string(e.Kv.Key)
		if !c.covers(k) {
			continue
		}
		if e.Type == mvccpb.DELETE {
			c.set(k, nil, e.Kv.ModRevision) // a deletion's event carries its revision
		} else {
			c.set(k, clone(e.Kv.Value), e.Kv.ModRevision)
		}
	}
	// What the watch delivered up to: a catching-up watch's header can be ahead of its events.
	if n := len(resp.Events); n > 0 {
		r.rev = max(r.rev, resp.Events[n-1].Kv.ModRevision)
	} else if resp.IsProgressNotify() {
		r.rev = max(r.rev, resp.Header.Revision)
	}
}

// clone copies v; an empty value stays non-nil (nil is "absent").
func clone(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return bytes.Clone(v)
}

// ScanCopy implements kv.CopyScanner: fn sees the key and value of every key of bucket in the
// cache, in no particular order; ok is false (and fn is not called) when bucket is not
// cached or the cache is not ready. The copy may be behind etcd: what fn finds is a
// candidate, to be confirmed in an Update before anything is answered on it. fn runs without
// the cache's lock held, on a snapshot of the bucket's entries taken first, and may call the
// Store.
func (s *Store) ScanCopy(bucket []byte, fn func(k, v []byte) error) (bool, error) {
	c := s.cache
	if c == nil || kv.CheckBucket(bucket) != nil {
		return false, nil
	}
	if !c.all && !c.buckets[string(bucket)] {
		return false, nil
	}
	prefix := s.bucketPrefix(bucket)
	type kvPair struct {
		k string
		v []byte
	}
	var snap []kvPair
	c.mu.RLock()
	if !c.ready {
		c.mu.RUnlock()
		return false, nil
	}
	for k, e := range c.m {
		if strings.HasPrefix(k, prefix) {
			snap = append(snap, kvPair{k[len(prefix):], e.value})
		}
	}
	c.mu.RUnlock()
	for _, p := range snap {
		if err := fn([]byte(p.k), p.v); err != nil {
			if err == kv.Stop {
				return true, nil
			}
			return true, err
		}
	}
	return true, nil
}

// GetCopy implements kv.CopyScanner's point read: the value of key in bucket in the cache
// (nil: absent); ok is false when bucket is not cached or the cache is not ready. Like
// ScanCopy it may be behind etcd: for candidates to confirm in an Update.
func (s *Store) GetCopy(bucket, key []byte) ([]byte, bool) {
	c := s.cache
	if c == nil || kv.Check(bucket, key) != nil {
		return nil, false
	}
	k := s.dataKey(bucket, key)
	if !c.covers(k) {
		return nil, false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.ready {
		return nil, false
	}
	return c.m[k].value, true
}
