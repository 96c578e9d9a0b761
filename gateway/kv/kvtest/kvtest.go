// Package kvtest is the contract every kv.Store implementation passes: the same cases run
// against bbolt (package boltkv's tests) and against a real embedded etcd (package etcdkv's).
package kvtest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"telematics/gateway/kv"
)

// Open returns a fresh, empty store for one case; the case closes it.
type Open func(t testing.TB) kv.Store

var (
	bkt   = []byte("keys")
	other = []byte("keys_other") // shares a name prefix with bkt: must not mix with it
	seqs  = []byte("audit")
)

// Run runs every case of the contract against stores from open.
func Run(t *testing.T, open Open) {
	cases := []struct {
		name string
		run  func(t *testing.T, s kv.Store)
	}{
		{"GetPutDelete", getPutDelete},
		{"BadNames", badNames},
		{"OrderedScan", orderedScan},
		{"ScanSeesOwnWrites", scanSeesOwnWrites},
		{"Sequences", sequences},
		{"SetSequence", setSequence},
		{"FailedUpdateRollsBack", failedUpdateRollsBack},
		{"ViewIsReadOnly", viewIsReadOnly},
		{"ConcurrentIncrements", concurrentIncrements},
		{"ViewSeesSnapshot", viewSeesSnapshot},
		{"NoWriteSkewOnScans", noWriteSkewOnScans},
		{"CanceledContext", canceledContext},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				for range 2 {
					if err := s.Close(); err != nil {
						t.Errorf("Close (twice, idempotent): %v", err)
					}
				}
			})
			c.run(t, s)
		})
	}
}

var ctx = context.Background()

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, s kv.Store, bucket []byte, key string) []byte {
	t.Helper()
	var out []byte
	must(t, s.View(ctx, func(tx kv.Tx) error {
		v, err := tx.Get(bucket, []byte(key))
		out = slices.Clone(v)
		return err
	}))
	return out
}

func put(t *testing.T, s kv.Store, bucket []byte, kvs ...string) {
	t.Helper()
	must(t, s.Update(ctx, func(tx kv.Tx) error {
		for i := 0; i < len(kvs); i += 2 {
			if err := tx.Put(bucket, []byte(kvs[i]), []byte(kvs[i+1])); err != nil {
				return err
			}
		}
		return nil
	}))
}

// scan returns "k=v" for every key of bucket under prefix from from.
func scan(t *testing.T, tx kv.Tx, bucket []byte, prefix, from string, limit int) []string {
	t.Helper()
	var out []string
	must(t, tx.Scan(bucket, []byte(prefix), []byte(from), func(k, v []byte) error {
		out = append(out, string(k)+"="+string(v))
		if len(out) == limit {
			return kv.Stop
		}
		return nil
	}))
	return out
}

func scanView(t *testing.T, s kv.Store, bucket []byte, prefix, from string, limit int) []string {
	t.Helper()
	var out []string
	must(t, s.View(ctx, func(tx kv.Tx) error { out = scan(t, tx, bucket, prefix, from, limit); return nil }))
	return out
}

func getPutDelete(t *testing.T, s kv.Store) {
	if v := get(t, s, bkt, "a"); v != nil {
		t.Fatalf("never-written bucket: Get = %q, want nil", v)
	}
	must(t, s.Update(ctx, func(tx kv.Tx) error {
		if err := tx.Put(bkt, []byte("a"), []byte("1")); err != nil {
			return err
		}
		if err := tx.Put(bkt, []byte("empty"), nil); err != nil {
			return err
		}
		v, err := tx.Get(bkt, []byte("a"))
		if err != nil || string(v) != "1" {
			return fmt.Errorf("Get after Put in the same Update = %q, %v; want 1", v, err)
		}
		return nil
	}))
	if v := get(t, s, bkt, "a"); string(v) != "1" {
		t.Fatalf("Get(a) = %q, want 1", v)
	}
	if v := get(t, s, bkt, "empty"); v == nil || len(v) != 0 {
		t.Fatalf("Get(empty) = %#v, want an empty non-nil value", v)
	}
	if v := get(t, s, other, "a"); v != nil {
		t.Fatalf("another bucket: Get(a) = %q, want nil", v)
	}
	put(t, s, bkt, "a", "2")
	if v := get(t, s, bkt, "a"); string(v) != "2" {
		t.Fatalf("overwritten: Get(a) = %q, want 2", v)
	}
	must(t, s.Update(ctx, func(tx kv.Tx) error {
		if err := tx.Delete(bkt, []byte("a")); err != nil {
			return err
		}
		if v, err := tx.Get(bkt, []byte("a")); err != nil || v != nil {
			return fmt.Errorf("Get after Delete in the same Update = %q, %v; want nil", v, err)
		}
		return tx.Delete(bkt, []byte("never-there"))
	}))
	if v := get(t, s, bkt, "a"); v != nil {
		t.Fatalf("deleted: Get(a) = %q, want nil", v)
	}
}

func badNames(t *testing.T, s kv.Store) {
	for _, c := range []struct{ bucket, key string }{{"", "k"}, {"a/b", "k"}, {"keys", ""}} {
		err := s.Update(ctx, func(tx kv.Tx) error { return tx.Put([]byte(c.bucket), []byte(c.key), []byte("v")) })
		if !errors.Is(err, kv.ErrBadName) {
			t.Errorf("Put(%q, %q) = %v, want ErrBadName", c.bucket, c.key, err)
		}
	}
}

func orderedScan(t *testing.T, s kv.Store) {
	// Written out of order, in two transactions.
	put(t, s, bkt, "v2/k1", "c", "v1/k2", "b", "v1/k1", "a")
	put(t, s, bkt, "v10/k1", "e", "v3", "d", "v1/k1\xff", "f")
	put(t, s, other, "v1/k0", "x")
	must(t, s.Update(ctx, func(tx kv.Tx) error { _, err := tx.NextSequence(bkt); return err }))
	for _, c := range []struct {
		name, prefix, from string
		limit              int
		want               []string
	}{
		{"all", "", "", 0, []string{"v1/k1=a", "v1/k1\xff=f", "v1/k2=b", "v10/k1=e", "v2/k1=c", "v3=d"}},
		{"prefix", "v1/", "", 0, []string{"v1/k1=a", "v1/k1\xff=f", "v1/k2=b"}},
		{"prefix from", "v1/", "v1/k2", 0, []string{"v1/k2=b"}},
		{"from between keys", "", "v10", 0, []string{"v10/k1=e", "v2/k1=c", "v3=d"}},
		{"from before prefix", "v2/", "v1", 0, []string{"v2/k1=c"}},
		{"from after prefix", "v1/", "v2", 0, nil},
		{"stop", "", "", 2, []string{"v1/k1=a", "v1/k1\xff=f"}},
		{"no match", "v4/", "", 0, nil},
	} {
		if got := scanView(t, s, bkt, c.prefix, c.from, c.limit); !slices.Equal(got, c.want) {
			t.Errorf("%s: Scan(prefix %q, from %q) = %q, want %q", c.name, c.prefix, c.from, got, c.want)
		}
	}
	if got := scanView(t, s, []byte("never"), "", "", 0); got != nil {
		t.Errorf("never-written bucket: Scan = %q, want nothing", got)
	}
	boom := errors.New("boom")
	err := s.View(ctx, func(tx kv.Tx) error {
		return tx.Scan(bkt, nil, nil, func(k, v []byte) error { return boom })
	})
	if !errors.Is(err, boom) {
		t.Errorf("Scan callback error: View = %v, want boom", err)
	}
}

func scanSeesOwnWrites(t *testing.T, s kv.Store) {
	put(t, s, bkt, "a", "1", "b", "2", "c", "3")
	must(t, s.Update(ctx, func(tx kv.Tx) error {
		for _, op := range [][2]string{{"b", ""}, {"bb", "new"}, {"c", "changed"}, {"0", "first"}} {
			var err error
			if op[1] == "" {
				err = tx.Delete(bkt, []byte(op[0]))
			} else {
				err = tx.Put(bkt, []byte(op[0]), []byte(op[1]))
			}
			if err != nil {
				return err
			}
		}
		want := []string{"0=first", "a=1", "bb=new", "c=changed"}
		if got := scan(t, tx, bkt, "", "", 0); !slices.Equal(got, want) {
			return fmt.Errorf("Scan inside the Update = %q, want %q", got, want)
		}
		return nil
	}))
	if got, want := scanView(t, s, bkt, "", "", 0), []string{"0=first", "a=1", "bb=new", "c=changed"}; !slices.Equal(got, want) {
		t.Errorf("after commit: Scan = %q, want %q", got, want)
	}
}

func sequences(t *testing.T, s kv.Store) {
	next := func(n int) []uint64 {
		var out []uint64
		must(t, s.Update(ctx, func(tx kv.Tx) error {
			out = out[:0] // the function may run again
			for range n {
				v, err := tx.NextSequence(seqs)
				if err != nil {
					return err
				}
				out = append(out, v)
			}
			return nil
		}))
		return out
	}
	if got := next(3); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("first sequence numbers = %v, want 1 2 3", got)
	}
	err := s.Update(ctx, func(tx kv.Tx) error {
		if _, err := tx.NextSequence(seqs); err != nil {
			return err
		}
		return errors.New("refused")
	})
	if err == nil {
		t.Fatal("refusing Update succeeded")
	}
	if got := next(1); !slices.Equal(got, []uint64{4}) {
		t.Fatalf("after a rolled back Update: %v, want 4 (rolled back numbers are given back)", got)
	}
	must(t, s.View(ctx, func(tx kv.Tx) error {
		n, err := tx.Sequence(seqs)
		if err != nil || n != 4 {
			return fmt.Errorf("Sequence = %d, %v; want 4", n, err)
		}
		if n, err := tx.Sequence([]byte("never")); err != nil || n != 0 {
			return fmt.Errorf("Sequence of a new bucket = %d, %v; want 0", n, err)
		}
		if got := scan(t, tx, seqs, "", "", 0); got != nil {
			return fmt.Errorf("a bucket with only a sequence scans as %q, want nothing", got)
		}
		return nil
	}))
}

// SetSequence (a store copied by gateway store migrate) moves the sequence on which
// NextSequence continues; 0 removes it; it rolls back with its Update and is refused in View.
func setSequence(t *testing.T, s kv.Store) {
	must(t, s.Update(ctx, func(tx kv.Tx) error { return tx.SetSequence(seqs, 41) }))
	var got uint64
	must(t, s.Update(ctx, func(tx kv.Tx) error {
		var err error
		got, err = tx.NextSequence(seqs)
		return err
	}))
	if got != 42 {
		t.Fatalf("NextSequence after SetSequence(41) = %d, want 42", got)
	}
	err := s.Update(ctx, func(tx kv.Tx) error {
		if err := tx.SetSequence(seqs, 7); err != nil {
			return err
		}
		return errors.New("refused")
	})
	if err == nil {
		t.Fatal("refusing Update succeeded")
	}
	if err := s.View(ctx, func(tx kv.Tx) error { return tx.SetSequence(seqs, 1) }); !errors.Is(err, kv.ErrReadOnly) {
		t.Fatalf("SetSequence in View: %v, want ErrReadOnly", err)
	}
	if err := s.Update(ctx, func(tx kv.Tx) error { return tx.SetSequence([]byte("a/b"), 1) }); !errors.Is(err, kv.ErrBadName) {
		t.Fatalf("SetSequence of a bad bucket name: %v, want ErrBadName", err)
	}
	must(t, s.View(ctx, func(tx kv.Tx) error {
		if n, err := tx.Sequence(seqs); err != nil || n != 42 {
			return fmt.Errorf("Sequence after a rolled back SetSequence = %d, %v; want 42", n, err)
		}
		return nil
	}))
	must(t, s.Update(ctx, func(tx kv.Tx) error { return tx.SetSequence(seqs, 0) }))
	must(t, s.View(ctx, func(tx kv.Tx) error {
		if n, err := tx.Sequence(seqs); err != nil || n != 0 {
			return fmt.Errorf("Sequence after SetSequence(0) = %d, %v; want 0", n, err)
		}
		return nil
	}))
}

func failedUpdateRollsBack(t *testing.T, s kv.Store) {
	put(t, s, bkt, "keep", "old")
	refused := errors.New("refused")
	committed := false
	err := s.Update(ctx, func(tx kv.Tx) error {
		tx.OnCommit(func() { committed = true })
		for _, k := range []string{"x", "y", "keep"} {
			if err := tx.Put(bkt, []byte(k), []byte("new")); err != nil {
				return err
			}
		}
		if err := tx.Put(other, []byte("z"), []byte("new")); err != nil {
			return err
		}
		if err := tx.Delete(bkt, []byte("keep")); err != nil {
			return err
		}
		return fmt.Errorf("decided: %w", refused)
	})
	if !errors.Is(err, refused) {
		t.Fatalf("Update = %v, want the function's error", err)
	}
	if committed {
		t.Error("OnCommit ran for a rolled back Update")
	}
	if got, want := scanView(t, s, bkt, "", "", 0), []string{"keep=old"}; !slices.Equal(got, want) {
		t.Errorf("after a failed Update: %q, want %q", got, want)
	}
	if got := scanView(t, s, other, "", "", 0); got != nil {
		t.Errorf("after a failed Update: other bucket %q, want nothing", got)
	}
}

func viewIsReadOnly(t *testing.T, s kv.Store) {
	ran := 0
	must(t, s.View(ctx, func(tx kv.Tx) error {
		tx.OnCommit(func() { ran++ })
		if err := tx.Put(bkt, []byte("a"), []byte("1")); !errors.Is(err, kv.ErrReadOnly) {
			return fmt.Errorf("Put in View = %v, want ErrReadOnly", err)
		}
		if err := tx.Delete(bkt, []byte("a")); !errors.Is(err, kv.ErrReadOnly) {
			return fmt.Errorf("Delete in View = %v, want ErrReadOnly", err)
		}
		if _, err := tx.NextSequence(bkt); !errors.Is(err, kv.ErrReadOnly) {
			return fmt.Errorf("NextSequence in View = %v, want ErrReadOnly", err)
		}
		return nil
	}))
	if ran != 1 {
		t.Errorf("View's OnCommit ran %d times, want 1", ran)
	}
}

// concurrentIncrements: several goroutines each increment one counter and take a sequence
// number in the same Update; every increment counts once and the numbers are 1..N.
func concurrentIncrements(t *testing.T, s kv.Store) {
	const goroutines, each = 4, 15
	var (
		mu      sync.Mutex
		numbers []uint64
		commits int
		wg      sync.WaitGroup
		errs    = make(chan error, goroutines)
	)
	for range goroutines {
		wg.Go(func() {
			for range each {
				var n uint64
				err := s.Update(ctx, func(tx kv.Tx) error {
					v, err := tx.Get(bkt, []byte("counter"))
					if err != nil {
						return err
					}
					var c uint64
					if len(v) == 8 {
						c = binary.BigEndian.Uint64(v)
					}
					if err := tx.Put(bkt, []byte("counter"), binary.BigEndian.AppendUint64(nil, c+1)); err != nil {
						return err
					}
					if n, err = tx.NextSequence(seqs); err != nil {
						return err
					}
					tx.OnCommit(func() { mu.Lock(); commits++; mu.Unlock() })
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				numbers = append(numbers, n)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	const total = goroutines * each
	if v := get(t, s, bkt, "counter"); len(v) != 8 || binary.BigEndian.Uint64(v) != total {
		t.Fatalf("counter = %x, want %d", v, total)
	}
	slices.Sort(numbers)
	for i, n := range numbers {
		if n != uint64(i+1) {
			t.Fatalf("sequence numbers %v: want 1..%d, each once", numbers, total)
		}
	}
	if commits != total {
		t.Fatalf("OnCommit ran %d times, want %d (once per committed Update)", commits, total)
	}
}

// viewSeesSnapshot: writers move units between two keys and rewrite a ledger of keys whose
// values always sum to the same; concurrent Views never see a half-made move.
func viewSeesSnapshot(t *testing.T, s kv.Store) {
	const accounts, total = 5, 100
	init := []string{}
	for i := range accounts {
		amount := 0
		if i == 0 {
			amount = total
		}
		init = append(init, fmt.Sprintf("acct/%d", i), fmt.Sprint(amount))
	}
	put(t, s, bkt, init...)
	done := make(chan struct{})
	var wg sync.WaitGroup
	writerErr := make(chan error, 1)
	wg.Go(func() {
		defer close(done)
		for i := range 30 {
			from, to := []byte(fmt.Sprintf("acct/%d", i%accounts)), []byte(fmt.Sprintf("acct/%d", (i+1)%accounts))
			err := s.Update(ctx, func(tx kv.Tx) error {
				a, err := tx.Get(bkt, from)
				if err != nil {
					return err
				}
				var n int
				fmt.Sscan(string(a), &n)
				if err := tx.Put(bkt, from, []byte("0")); err != nil {
					return err
				}
				b, err := tx.Get(bkt, to)
				if err != nil {
					return err
				}
				var m int
				fmt.Sscan(string(b), &m)
				return tx.Put(bkt, to, []byte(fmt.Sprint(n+m)))
			})
			if err != nil {
				writerErr <- err
				return
			}
		}
	})
	views := 0
	for stop := false; !stop; views++ {
		select {
		case <-done:
			stop = true // one more View after the last write
		default:
		}
		must(t, s.View(ctx, func(tx kv.Tx) error {
			sum := 0
			var parts []string
			err := tx.Scan(bkt, []byte("acct/"), nil, func(k, v []byte) error {
				var n int
				fmt.Sscan(string(v), &n)
				sum += n
				parts = append(parts, string(k)+"="+string(v))
				return nil
			})
			if err != nil {
				return err
			}
			// A point read after the scan sees the same snapshot.
			v, err := tx.Get(bkt, []byte("acct/0"))
			if err != nil {
				return err
			}
			if sum != total || !slices.Contains(parts, "acct/0="+string(v)) {
				return fmt.Errorf("View saw %s (sum %d, want %d) and then acct/0=%s", strings.Join(parts, " "), sum, total, v)
			}
			return nil
		}))
	}
	wg.Wait()
	select {
	case err := <-writerErr:
		t.Fatal(err)
	default:
	}
	t.Logf("%d consistent views", views)
}

// noWriteSkewOnScans: two Updates each count a car's owner keys with a scan and revoke their
// own only if another owner remains (the last-owner rule). Run at the same time, they must
// not both revoke.
func noWriteSkewOnScans(t *testing.T, s kv.Store) {
	for round := range 5 {
		prefix := fmt.Sprintf("car%d/", round)
		put(t, s, bkt, prefix+"owner1", "owner", prefix+"owner2", "owner")
		// Both functions wait for each other after their scan on their first run, so on a
		// store that runs them side by side (etcd) they overlap for sure; a store that runs
		// Updates one at a time (bbolt) goes on after a bounded wait.
		var arrived atomic.Int32
		both := make(chan struct{})
		meet := func() {
			if arrived.Add(1) == 2 {
				close(both)
			}
			wait := time.NewTimer(200 * time.Millisecond)
			defer wait.Stop()
			select {
			case <-both:
			case <-wait.C:
			}
		}
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for i := 1; i <= 2; i++ {
			wg.Go(func() {
				first := true
				errs <- s.Update(ctx, func(tx kv.Tx) error {
					owners := 0
					err := tx.Scan(bkt, []byte(prefix), nil, func(k, v []byte) error {
						if string(v) == "owner" {
							owners++
						}
						return nil
					})
					if err != nil {
						return err
					}
					if first {
						first = false
						meet()
					}
					if owners < 2 {
						return nil // the last owner keeps their key
					}
					mine := []byte(fmt.Sprintf("%sowner%d", prefix, i))
					if round%2 == 1 {
						return tx.Delete(bkt, mine) // a deletion, not a change, in the scanned range
					}
					return tx.Put(bkt, mine, []byte("revoked"))
				})
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			must(t, err)
		}
		if got := scanView(t, s, bkt, prefix, "", 0); !slices.ContainsFunc(got, func(e string) bool { return strings.HasSuffix(e, "=owner") }) {
			t.Fatalf("round %d: both owners revoked: %q", round, got)
		}
	}
}

// canceledContext: a caller that gave up gets its context's error and nothing is written.
func canceledContext(t *testing.T, s kv.Store) {
	c, cancel := context.WithCancel(ctx)
	cancel()
	err := s.Update(c, func(tx kv.Tx) error {
		if _, err := tx.Get(bkt, []byte("a")); err != nil {
			return err
		}
		return tx.Put(bkt, []byte("a"), []byte("1"))
	})
	if !errors.Is(err, context.Canceled) || errors.Is(err, kv.ErrUnavailable) {
		t.Fatalf("Update with a canceled context = %v, want context.Canceled (not ErrUnavailable)", err)
	}
	if v := get(t, s, bkt, "a"); v != nil {
		t.Fatalf("canceled Update wrote a=%q", v)
	}
}

// Bench measures the audit append's shape (a sequence number and a record) and a
// read-modify-write of a per-user key, one Update each, alone and from parallel goroutines
// (which conflict on the sequence on etcd, and share commits on bbolt).
func Bench(b *testing.B, open Open) {
	record := make([]byte, 300)
	for _, parallel := range []bool{false, true} {
		b.Run(fmt.Sprintf("parallel=%v", parallel), func(b *testing.B) {
			s := open(b)
			defer s.Close()
			update := func(user []byte) {
				err := s.Update(ctx, func(tx kv.Tx) error {
					if _, err := tx.Get(bkt, user); err != nil {
						return err
					}
					if err := tx.Put(bkt, user, record[:16]); err != nil {
						return err
					}
					n, err := tx.NextSequence(seqs)
					if err != nil {
						return err
					}
					return tx.Put(seqs, binary.BigEndian.AppendUint64(nil, n), record)
				})
				if err != nil {
					b.Error(err)
				}
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(record)))
			if !parallel {
				for b.Loop() {
					update([]byte("user"))
				}
				return
			}
			var id atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				user := fmt.Appendf(nil, "user%d", id.Add(1))
				for pb.Next() {
					update(user)
				}
			})
		})
	}
}
