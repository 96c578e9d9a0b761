package etcdkv_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/kv/kvtest"
	"telematics/internal/etcdtest"
	"telematics/internal/testutil"
)

// The contract holds with every bucket cached.
func TestContractCached(t *testing.T) { kvtest.Run(t, cachedOpener(etcdtest.Start(t))) }

// BenchmarkUpdateCached is BenchmarkUpdate with every bucket cached: the Get and the
// sequence's read come from the cache, the commit is the one RPC.
func BenchmarkUpdateCached(b *testing.B) { kvtest.Bench(b, cachedOpener(etcdtest.Start(b))) }

// cachedOpener opens stores caching every bucket, and waits until the cache is loaded.
func cachedOpener(cluster *etcdtest.Cluster) kvtest.Open {
	return func(t testing.TB) kv.Store {
		s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Prefix: "/" + t.Name() + "/",
			Timeout: 20 * time.Second, Cache: []string{"*"}})
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(30 * time.Second); !s.CacheStats().Ready; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the cache did not get ready")
			}
		}
		t.Cleanup(func() { t.Logf("cache: %+v", s.CacheStats()) })
		return s
	}
}

var (
	bctx    = context.Background()
	cnt     = []byte("cnt")   // cached by the stores under test
	plain   = []byte("plain") // not cached
	counter = []byte("n")
)

func openStore(t *testing.T, cluster *etcdtest.Cluster, cache ...string) *etcdkv.Store {
	t.Helper()
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Prefix: "/c/", Timeout: 20 * time.Second, Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitFor polls cond until it holds, failing the test after a bound far beyond need.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

func ready(s *etcdkv.Store) func() bool { return func() bool { return s.CacheStats().Ready } }

func read(t *testing.T, s kv.Store, bucket []byte, key string) string {
	t.Helper()
	var out string
	if err := s.Update(bctx, func(tx kv.Tx) error {
		v, err := tx.Get(bucket, []byte(key))
		out = string(v)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func put(t *testing.T, s kv.Store, bucket []byte, key, value string) {
	t.Helper()
	if err := s.Update(bctx, func(tx kv.Tx) error { return tx.Put(bucket, []byte(key), []byte(value)) }); err != nil {
		t.Fatal(err)
	}
}

// incr adds one to the counter and takes a sequence number, reading an uncached key too.
func incr(t *testing.T, s kv.Store) {
	t.Helper()
	err := s.Update(bctx, func(tx kv.Tx) error {
		v, err := tx.Get(cnt, counter)
		if err != nil {
			return err
		}
		var n uint64
		if len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		if _, err := tx.Get(plain, counter); err != nil {
			return err
		}
		if _, err := tx.NextSequence(cnt); err != nil {
			return err
		}
		return tx.Put(cnt, counter, binary.BigEndian.AppendUint64(nil, n+1))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A stale cache changes no outcome: reads it served that etcd no longer holds make the
// Update run again on etcd's reads, whether it wrote, wrote nothing, or failed.
func TestStaleCacheIsHarmless(t *testing.T) {
	cluster := etcdtest.Start(t)
	a, b := openStore(t, cluster, "cnt"), openStore(t, cluster)
	waitFor(t, "A's cache is ready", ready(a))
	resume := a.PauseCache()
	defer resume()

	// Read-modify-writes by A and B in turn: A's cache never sees B's, all count.
	const rounds = 5
	for range rounds {
		incr(t, b)
		incr(t, a)
	}
	var n, seq uint64
	if err := b.View(bctx, func(tx kv.Tx) error {
		v, err := tx.Get(cnt, counter)
		if len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		if err == nil {
			seq, err = tx.Sequence(cnt)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n != 2*rounds || seq != 2*rounds {
		t.Fatalf("counter %d, sequence %d after %d increments each by A and B", n, seq, rounds)
	}
	if st := a.CacheStats(); st.StaleReruns < rounds || st.Hits == 0 {
		t.Fatalf("A's cache stats %+v: want a hit and a stale rerun per increment after B's", st)
	}

	// A write-less Update returns what etcd holds, not the cache's.
	stale := a.CacheStats().StaleReruns
	put(t, b, cnt, "k", "fresh")
	if got := read(t, a, cnt, "k"); got != "fresh" {
		t.Fatalf("A's write-less Update read %q, want B's %q", got, "fresh")
	}
	// So does a View, which never reads the cache.
	if err := a.View(bctx, func(tx kv.Tx) error {
		if v, err := tx.Get(cnt, []byte("k")); err != nil || string(v) != "fresh" {
			return fmt.Errorf("A's View read %q, %v; want %q", v, err, "fresh")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// An error that came from a stale read is not returned: fn runs again on etcd's reads.
	put(t, b, cnt, "k", "newer")
	errOld := errors.New("saw the old value")
	var got string
	runs := 0
	err := a.Update(bctx, func(tx kv.Tx) error {
		runs++
		v, err := tx.Get(cnt, []byte("k"))
		if err != nil {
			return err
		}
		if string(v) != "newer" {
			return errOld
		}
		got = string(v)
		return nil
	})
	if err != nil || got != "newer" || runs != 2 {
		t.Fatalf("A's Update failing on the old value: %v, read %q in %d runs; want success with %q in 2", err, got, runs, "newer")
	}

	// A key read from the cache and then scanned from etcd at a newer value: run again.
	put(t, b, cnt, "k", "newest")
	var point, scanned string
	if err := a.Update(bctx, func(tx kv.Tx) error {
		v, err := tx.Get(cnt, []byte("k"))
		point = string(v)
		if err != nil {
			return err
		}
		return tx.Scan(cnt, []byte("k"), nil, func(k, v []byte) error { scanned = string(v); return nil })
	}); err != nil {
		t.Fatal(err)
	}
	if point != "newest" || scanned != "newest" {
		t.Fatalf("A's Get then Scan of k returned %q and %q, want %q both", point, scanned, "newest")
	}
	if st := a.CacheStats(); st.StaleReruns < stale+3 {
		t.Fatalf("A's stale reruns went from %d to %d over three stale Updates", stale, st.StaleReruns)
	}

	// A's own commits go into its cache at once, even while it does not follow etcd.
	put(t, a, cnt, "k", "mine")
	before := a.CacheStats()
	if got := read(t, a, cnt, "k"); got != "mine" {
		t.Fatalf("A read %q after writing %q", got, "mine")
	}
	if after := a.CacheStats(); after.Hits != before.Hits+1 || after.StaleReruns != before.StaleReruns {
		t.Fatalf("A reading its own last write: cache stats %+v then %+v, want one hit and no rerun", before, after)
	}
}

// hitReads polls until an Update of s reads want for key from the cache: a hit, and no rerun.
func hitReads(t *testing.T, s *etcdkv.Store, key, want string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("a cache hit reads %s=%s", key, want), func() bool {
		before := s.CacheStats()
		got := read(t, s, cnt, key)
		after := s.CacheStats()
		return got == want && after.Hits > before.Hits && after.StaleReruns == before.StaleReruns
	})
}

// The cache follows other writers' commits and serves them without an RPC; an error from a
// function whose cached reads were current is returned after one run.
func TestCacheServesOthersWrites(t *testing.T) {
	cluster := etcdtest.Start(t)
	a, b := openStore(t, cluster, "cnt"), openStore(t, cluster)
	put(t, b, cnt, "k", "1")
	hitReads(t, a, "k", "1")
	if err := b.Update(bctx, func(tx kv.Tx) error { return tx.Delete(cnt, []byte("k")) }); err != nil {
		t.Fatal(err)
	}
	hitReads(t, a, "k", "")

	// A cached bucket's sequence is watched too (its key alone, not every bucket's).
	if err := b.Update(bctx, func(tx kv.Tx) error { _, err := tx.NextSequence(cnt); return err }); err != nil {
		t.Fatal(err)
	}
	testutil.EventuallyTrue(t, 30*time.Second, func() bool {
		before := a.CacheStats()
		var n uint64
		if err := a.Update(bctx, func(tx kv.Tx) error {
			var err error
			n, err = tx.Sequence(cnt)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		after := a.CacheStats()
		return n == 1 && after.Hits > before.Hits && after.StaleReruns == before.StaleReruns
	})

	refused, runs := errors.New("refused"), 0
	err := a.Update(bctx, func(tx kv.Tx) error {
		runs++
		_, err := tx.Get(cnt, []byte("k"))
		if err != nil {
			return err
		}
		return refused
	})
	if !errors.Is(err, refused) || runs != 1 {
		t.Fatalf("Update refusing after a current cached read = %v in %d runs, want its error in 1", err, runs)
	}
}

// After its watch breaks the cache loads again, history compacted or not, and is current.
func TestCacheReloadsAfterBrokenWatch(t *testing.T) {
	cluster := etcdtest.Start(t)
	a, b := openStore(t, cluster, "cnt"), openStore(t, cluster)
	put(t, b, cnt, "k", "before")
	hitReads(t, a, "k", "before")
	reloads := a.CacheStats().Reloads

	resume := a.PauseCache()
	put(t, b, cnt, "k", "while paused")
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(bctx, "/c/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(bctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	a.BreakCacheWatch()
	resume()

	waitFor(t, "the cache loads again", func() bool { st := a.CacheStats(); return st.Reloads > reloads && st.Ready })
	hitReads(t, a, "k", "while paused")
	put(t, b, cnt, "k", "after")
	hitReads(t, a, "k", "after")
}

// Close ends the cache's goroutine, and a bad bucket name is refused at Open.
func TestCacheCloseAndBadName(t *testing.T) {
	cluster := etcdtest.Start(t)
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Cache: []string{"cnt"}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the cache is ready", ready(s))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.CacheDone():
	default:
		t.Fatal("Close returned with the cache's goroutine running")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err = etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Cache: []string{"a/b"}})
	if !errors.Is(err, kv.ErrBadName) || !strings.Contains(err.Error(), "a/b") {
		t.Fatalf("Open caching bucket a/b = %v, want ErrBadName naming it", err)
	}
}
