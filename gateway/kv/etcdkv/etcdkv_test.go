package etcdkv_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/kv/kvtest"
	"telematics/internal/etcdtest"
)

// One embedded etcd for the contract; each case gets a prefix of its own.
func TestContract(t *testing.T) { kvtest.Run(t, opener(etcdtest.Start(t))) }

// BenchmarkUpdate runs on one embedded member (fsync off: etcdtest's setting), so it measures
// the client, the Txn and the conflicts, not a disk.
func BenchmarkUpdate(b *testing.B) { kvtest.Bench(b, opener(etcdtest.Start(b))) }

func opener(cluster *etcdtest.Cluster) kvtest.Open {
	return func(t testing.TB) kv.Store {
		s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Prefix: "/" + t.Name() + "/", Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

// An unreachable etcd gives kv.ErrUnavailable within the store's bound, not a hang.
func TestUnreachable(t *testing.T) {
	cluster := etcdtest.Start(t)
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Update(ctx, func(tx kv.Tx) error { return tx.Put([]byte("b"), []byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	cluster.Close()
	for name, op := range map[string]func() error{
		"View": func() error {
			return s.View(ctx, func(tx kv.Tx) error { _, err := tx.Get([]byte("b"), []byte("k")); return err })
		},
		"Update": func() error {
			return s.Update(ctx, func(tx kv.Tx) error { return tx.Put([]byte("b"), []byte("k"), []byte("w")) })
		},
	} {
		done := make(chan error, 1)
		go func() { done <- op() }()
		select {
		case err := <-done:
			if !errors.Is(err, kv.ErrUnavailable) || !strings.Contains(err.Error(), cluster.Endpoints()[0]) {
				t.Errorf("%s with etcd down = %v, want ErrUnavailable naming the endpoint", name, err)
			}
		case <-time.After(30 * time.Second): // a hang detector, far beyond the 1s bound
			t.Fatalf("%s with etcd down did not return", name)
		}
	}
}

// A transaction larger than etcd takes in one Txn fails before it is sent, and writes nothing.
func TestTooLarge(t *testing.T) {
	cluster := etcdtest.Start(t)
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	err = s.Update(ctx, func(tx kv.Tx) error {
		for i := range 200 {
			if err := tx.Put([]byte("b"), fmt.Appendf(nil, "k%03d", i), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, kv.ErrTooLarge) {
		t.Fatalf("Update of 200 keys = %v, want ErrTooLarge", err)
	}
	n := 0
	if err := s.View(ctx, func(tx kv.Tx) error {
		return tx.Scan([]byte("b"), nil, nil, func(k, v []byte) error { n++; return nil })
	}); err != nil || n != 0 {
		t.Fatalf("after a refused Update: %d keys, %v; want none", n, err)
	}
}

// On a 3-member cluster the store keeps working when one member stops, and refuses with
// ErrUnavailable, within its bound, once quorum is lost.
func TestMemberLossAndQuorumLoss(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 3)
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	incr := func() error {
		return s.Update(ctx, func(tx kv.Tx) error {
			v, err := tx.Get([]byte("b"), []byte("n"))
			if err != nil {
				return err
			}
			return tx.Put([]byte("b"), []byte("n"), append(slices.Clone(v), 'x')) // one x per write
		})
	}
	read := func() (string, error) {
		var out string
		err := s.View(ctx, func(tx kv.Tx) error {
			v, err := tx.Get([]byte("b"), []byte("n"))
			out = string(v)
			return err
		})
		return out, err
	}
	if err := incr(); err != nil {
		t.Fatal(err)
	}
	cluster.StopMember(0)
	// Ambiguous commits are not retried by the store (one may have applied), so a write that
	// raced the member's stop may fail with ErrUnavailable; the next ones succeed.
	ok := 0
	for range 10 {
		if err := incr(); err == nil {
			ok++
		} else if !errors.Is(err, kv.ErrUnavailable) {
			t.Fatalf("write after one member stopped: %v", err)
		}
	}
	if ok == 0 {
		t.Fatal("no write succeeded with 2 of 3 members up")
	}
	// Every acknowledged write is there (an unacknowledged one may be too).
	if v, err := read(); err != nil || len(v) < 1+ok {
		t.Fatalf("read after one member stopped = %q, %v; want at least %d writes", v, err, 1+ok)
	}
	t.Logf("%d of 10 writes acknowledged with one member down", ok)
	cluster.StopMember(1)
	q, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	done := make(chan error, 1)
	go func() {
		done <- q.Update(ctx, func(tx kv.Tx) error { return tx.Put([]byte("b"), []byte("x"), []byte("1")) })
	}()
	select {
	case err := <-done:
		if !errors.Is(err, kv.ErrUnavailable) {
			t.Fatalf("write without quorum = %v, want ErrUnavailable", err)
		}
	case <-time.After(30 * time.Second): // a hang detector, far beyond the 1s bound
		t.Fatal("write without quorum did not return")
	}
}

// Buckets names each bucket under the store's prefix that holds a key or only a sequence,
// once, and nothing of another prefix.
func TestBuckets(t *testing.T) {
	cluster := etcdtest.Start(t)
	open := func(prefix string) *etcdkv.Store {
		s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s, neighbour := open("/a/"), open("/a2/")
	ctx := context.Background()
	if got, err := s.Buckets(ctx); err != nil || len(got) != 0 {
		t.Fatalf("empty store: Buckets = %q, %v", got, err)
	}
	if err := neighbour.Update(ctx, func(tx kv.Tx) error { return tx.Put([]byte("other"), []byte("k"), nil) }); err != nil {
		t.Fatal(err)
	}
	err := s.Update(ctx, func(tx kv.Tx) error {
		for i := range 5 {
			for _, b := range []string{"users", "users_x", "u"} {
				if err := tx.Put([]byte(b), fmt.Appendf(nil, "k%d", i), []byte("v")); err != nil {
					return err
				}
			}
		}
		if _, err := tx.NextSequence([]byte("users")); err != nil {
			return err
		}
		return tx.SetSequence([]byte("audit"), 9)
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Buckets(ctx)
	if want := []string{"audit", "u", "users", "users_x"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("Buckets = %q, %v; want %q", got, err, want)
	}
}

// Many writers of one process on one hot key (what every audited write is: the audit sequence)
// all commit: after a first conflict they retry one at a time, so none spends its attempts
// losing to the others.
func TestHotKeyWritersOfOneProcessAllCommit(t *testing.T) {
	cluster := etcdtest.Start(t)
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Timeout: 60 * time.Second, MaxAttempts: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const writers = 40
	bucket := []byte("hot")
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Go(func() {
			errs <- s.Update(context.Background(), func(tx kv.Tx) error {
				_, err := tx.NextSequence(bucket)
				return err
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var n uint64
	if err := s.View(context.Background(), func(tx kv.Tx) error {
		var err error
		n, err = tx.Sequence(bucket)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n != writers {
		t.Fatalf("sequence %d after %d committed increments", n, writers)
	}
}
