package groupcommit

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func open(t testing.TB) *bolt.DB {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "g.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err })
	return db
}

func TestConcurrentWritesAllDurableAndIsolated(t *testing.T) {
	db := open(t)
	c := New(db)
	var wg sync.WaitGroup
	errs := make([]error, 200)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = c.Update(func(tx *bolt.Tx) error {
				if i%50 == 7 {
					return fmt.Errorf("write %d refuses", i)
				}
				return tx.Bucket([]byte("b")).Put([]byte(fmt.Sprint(i)), []byte("x"))
			})
		}(i)
	}
	wg.Wait()
	c.Close()
	n := 0
	db.View(func(tx *bolt.Tx) error { n = tx.Bucket([]byte("b")).Stats().KeyN; return nil })
	for i, err := range errs {
		if (i%50 == 7) != (err != nil) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if n != 196 {
		t.Fatalf("%d keys written, want 196 (a failing write must not take others with it)", n)
	}
	if err := c.Update(func(*bolt.Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
}

// Enqueue returns before the commit; its callback sees the write durable (or its error),
// Close commits what was enqueued before it, and an Enqueue after Close is told ErrClosed.
func TestEnqueueCommitsWithoutWaiting(t *testing.T) {
	db := open(t)
	c := New(db)
	outcomes := make(chan error, 101)
	for i := range 100 {
		c.Enqueue(func(tx *bolt.Tx) error {
			if i == 7 {
				return errors.New("write 7 refuses")
			}
			return tx.Bucket([]byte("b")).Put([]byte(fmt.Sprint(i)), []byte("x"))
		}, func(err error) {
			if err == nil && i == 0 {
				// Called once the commit is durable: another transaction sees the write.
				if ok, _ := has(db, "0"); !ok {
					t.Error("callback ran before the write was committed")
				}
			}
			outcomes <- err
		})
	}
	c.Enqueue(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte("nil-callback"), []byte("x")) }, nil)
	c.Close()
	c.Enqueue(func(*bolt.Tx) error { return nil }, func(err error) { outcomes <- err })
	close(outcomes)
	failed, ok := 0, 0
	for err := range outcomes {
		switch {
		case errors.Is(err, ErrClosed):
			failed += 100
		case err != nil:
			failed++
		default:
			ok++
		}
	}
	if ok != 99 || failed != 101 {
		t.Fatalf("%d committed, %d failed (+100 per ErrClosed): want 99 committed, write 7 failed, the late one closed", ok, failed)
	}
	if found, _ := has(db, "nil-callback"); !found {
		t.Fatal("a write enqueued before Close was not committed")
	}
}

// A write queued with Enqueue commits with the next Update (it is durable when that Update
// returns), and alone, without any Update, within MaxLaterDelay.
func TestEnqueueRidesOnTheNextUpdate(t *testing.T) {
	db := open(t)
	c := New(db)
	defer c.Close()
	put := func(key string) func(*bolt.Tx) error {
		return func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte(key), []byte("x")) }
	}
	c.Enqueue(put("later"), nil)
	if err := c.Update(put("now")); err != nil {
		t.Fatal(err)
	}
	if found, _ := has(db, "later"); !found {
		t.Fatal("the enqueued write was not committed with the Update after it")
	}
	committed := make(chan error, 1)
	c.Enqueue(put("alone"), func(err error) { committed <- err })
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	if found, _ := has(db, "alone"); !found {
		t.Fatal("the enqueued write is not in the store")
	}
}

func has(db *bolt.DB, key string) (bool, error) {
	var found bool
	err := db.View(func(tx *bolt.Tx) error { found = tx.Bucket([]byte("b")).Get([]byte(key)) != nil; return nil })
	return found, err
}

func BenchmarkLoneWrite(b *testing.B) {
	db := open(b)
	c := New(db)
	defer c.Close()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte(fmt.Sprint(i)), []byte("x")) })
	}
}

func BenchmarkLoneWriteDBBatch(b *testing.B) {
	db := open(b)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		db.Batch(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte(fmt.Sprint(i)), []byte("x")) })
	}
}

func BenchmarkParallelWrites(b *testing.B) {
	db := open(b)
	c := New(db)
	defer c.Close()
	b.ReportAllocs()
	b.SetParallelism(32)
	var n int64
	var mu sync.Mutex
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			n++
			k := n
			mu.Unlock()
			c.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte(fmt.Sprint(k)), []byte("x")) })
		}
	})
}

// BenchmarkParallelWritesSomeRefused is BenchmarkParallelWrites with one write in 50 refused
// (a duplicate, a full journal): the refusals must not cost the other writers their shared
// fsync.
func BenchmarkParallelWritesSomeRefused(b *testing.B) {
	db := open(b)
	c := New(db)
	defer c.Close()
	b.ReportAllocs()
	b.SetParallelism(32)
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := n.Add(1)
			c.Update(func(tx *bolt.Tx) error {
				if k%50 == 0 {
					return errors.New("refused")
				}
				return tx.Bucket([]byte("b")).Put([]byte(fmt.Sprint(k)), []byte("x"))
			})
		}
	})
}

// A write that refuses does not split its batch: the others still commit together, in one
// transaction (one fsync), not one each.
func TestRefusingWriteKeepsTheBatchTogether(t *testing.T) {
	db := open(t)
	c := New(db)
	defer c.Close()
	release := make(chan struct{})
	blocked := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- c.Update(func(*bolt.Tx) error {
			select {
			case <-blocked:
			default:
				close(blocked)
			}
			<-release
			return nil
		})
	}()
	<-blocked // the writer is busy: the writes below queue up and form one batch
	const n = 10
	var mu sync.Mutex
	txOf := map[int]int{} // write → the transaction it last ran in
	errs := make(chan error, n)
	var queued sync.WaitGroup
	for i := range n {
		queued.Add(1)
		go func() {
			queued.Done()
			errs <- c.Update(func(tx *bolt.Tx) error {
				mu.Lock()
				txOf[i] = tx.ID()
				mu.Unlock()
				if i == 3 {
					return errors.New("refused")
				}
				return tx.Bucket([]byte("b")).Put([]byte(fmt.Sprint(i)), []byte("x"))
			})
		}()
	}
	queued.Wait()
	for len(c.queue) < n { // all ten waiting behind the first write
		runtime.Gosched()
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	refused := 0
	for range n {
		if err := <-errs; err != nil {
			refused++
		}
	}
	if refused != 1 {
		t.Fatalf("%d writes refused, want 1", refused)
	}
	txs := map[int]bool{}
	for i, id := range txOf {
		if i != 3 {
			txs[id] = true
		}
	}
	if len(txs) != 1 {
		t.Fatalf("the 9 accepted writes committed in %d transactions, want 1", len(txs))
	}
}
