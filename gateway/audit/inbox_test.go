package audit

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/kv"
	"telematics/gateway/kv/boltkv"
	"telematics/internal/etcdtest"
	"telematics/internal/testutil"
)

// keysOf returns the keys of bucket, in order.
func keysOf(t *testing.T, kvs kv.Store, bucket []byte) [][]byte {
	t.Helper()
	var out [][]byte
	if err := kvs.View(t.Context(), func(tx kv.Tx) error {
		out = out[:0]
		return tx.Scan(bucket, nil, nil, func(k, _ []byte) error {
			out = append(out, append([]byte(nil), k...))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkLog checks that the log holds exactly the records with the given outcomes, each once,
// numbered 1..n with no gap, each record under its own number, and that the inbox is empty.
func checkLog(t *testing.T, kvs kv.Store, l *Log, want map[string]bool) {
	t.Helper()
	evs, err := l.Query(Filter{Limit: len(want) + 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != len(want) {
		t.Fatalf("%d records, want %d", len(evs), len(want))
	}
	seen := map[string]bool{}
	for i, e := range evs { // newest first
		if wantSeq := uint64(len(evs) - i); e.Seq != wantSeq {
			t.Fatalf("record %d from the newest has seq %d, want %d (gap or duplicate)", i, e.Seq, wantSeq)
		}
		if !want[e.Outcome] || seen[e.Outcome] {
			t.Fatalf("record %d: %q unexpected or seen twice", e.Seq, e.Outcome)
		}
		seen[e.Outcome] = true
	}
	keys := keysOf(t, kvs, bucketAudit)
	for i, k := range keys {
		if len(k) != 8 || binary.BigEndian.Uint64(k) != uint64(i+1) {
			t.Fatalf("audit key %d is %x, want the number %d", i, k, i+1)
		}
	}
	if in := keysOf(t, kvs, bucketInbox); len(in) != 0 {
		t.Fatalf("%d records left in the inbox", len(in))
	}
	if n, err := l.Count(); err != nil || n != len(want) {
		t.Fatalf("Count %d, %v; want %d", n, err, len(want))
	}
	if last, err := l.LastSeq(); err != nil || last != uint64(len(want)) {
		t.Fatalf("LastSeq %d, %v; want %d", last, err, len(want))
	}
}

// Two replicas (store clients of one etcd) with 8 writers each append at once, some events
// in transactions of two, while one replica's mover and readers on both number the inbox:
// every event is in the log exactly once, numbered without a gap. No append ever runs twice:
// appends read nothing, so they never conflict.
func TestInboxConcurrentAppendersOnTwoClients(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	stores := []kv.Store{openEtcd(t, etcd), openEtcd(t, etcd)}
	logs := []*Log{openLog(t, stores[0]), openLog(t, stores[1])}
	if !logs[0].inbox {
		t.Fatal("a log on etcd does not use the inbox")
	}
	ctx, cancel := context.WithCancel(t.Context())
	var bg sync.WaitGroup
	bg.Go(func() { logs[0].RunMover(ctx, slog.New(slog.DiscardHandler)) })
	defer func() { cancel(); bg.Wait() }()

	const writers, perWriter = 8, 25
	var runs, updates atomic.Int64
	want := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for c := range stores {
		for w := range writers {
			wg.Go(func() {
				for i := range perWriter {
					evs := []Event{{TsMs: int64(i), Kind: KindCommand, Outcome: fmt.Sprintf("c%d-w%d-%d", c, w, i)}}
					if i%5 == 0 {
						evs = append(evs, Event{TsMs: int64(i), Kind: KindResult, Outcome: fmt.Sprintf("c%d-w%d-%d-result", c, w, i)})
					}
					updates.Add(1)
					err := stores[c].Update(t.Context(), func(tx kv.Tx) error {
						runs.Add(1)
						return logs[c].AppendTx(tx, evs...)
					})
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for _, e := range evs {
						want[e.Outcome] = true
					}
					mu.Unlock()
					if i%10 == 0 { // a reader on either replica numbers what is there
						if _, err := logs[(c+w)%2].LastSeq(); err != nil {
							t.Error(err)
							return
						}
					}
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if r, u := runs.Load(), updates.Load(); r != u {
		t.Errorf("appends ran %d times for %d transactions: an append conflicted", r, u)
	}
	checkLog(t, stores[1], logs[1], want)
}

// A reader sees every record appended before it started, whichever replica appended it and
// although no mover runs.
func TestInboxReadYourWrites(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	a, b := openEtcd(t, etcd), openEtcd(t, etcd)
	la, lb := openLog(t, a), openLog(t, b)
	n := 0 // records appended
	for i := range 20 {
		w, r := la, lb
		if i%2 == 1 {
			w, r = lb, la
		}
		out := fmt.Sprintf("e%d", i)
		if err := w.Append(Event{TsMs: int64(i), Kind: KindAdmin, Outcome: out}); err != nil {
			t.Fatal(err)
		}
		n++
		got, err := r.Query(Filter{Limit: 1})
		if err != nil || len(got) != 1 || got[0].Outcome != out || got[0].Seq != uint64(n) {
			t.Fatalf("after appending %s: query %+v, %v", out, got, err)
		}
		if c, err := r.Count(); err != nil || c != n {
			t.Fatalf("after appending %s: count %d, %v; want %d", out, c, err, n)
		}
		if i%3 == 0 { // LastSeq numbers too
			if err := w.Append(Event{Kind: KindAdmin, Outcome: out + "-more"}); err != nil {
				t.Fatal(err)
			}
			n++
			if last, err := r.LastSeq(); err != nil || last != uint64(n) {
				t.Fatalf("LastSeq %d, %v; want %d", last, err, n)
			}
		}
	}
}

// A replica that crashes right after appending leaves its records in the inbox (they
// committed with the decisions they audit); another replica's mover numbers them without any
// reader asking.
func TestInboxLeftoversOfAClosedClientAreMoved(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	crashed := openEtcd(t, etcd)
	lc := openLog(t, crashed)
	want := map[string]bool{}
	for i := range 7 {
		out := fmt.Sprintf("before-crash-%d", i)
		want[out] = true
		if err := crashed.Update(t.Context(), func(tx kv.Tx) error {
			if err := tx.Put([]byte("decisions"), []byte(out), []byte("x")); err != nil {
				return err
			}
			return lc.AppendTx(tx, Event{TsMs: int64(i), Kind: KindCommand, Outcome: out})
		}); err != nil {
			t.Fatal(err)
		}
	}
	crashed.Close()

	other := openEtcd(t, etcd)
	if n := len(keysOf(t, other, bucketInbox)); n != 7 {
		t.Fatalf("%d records in the inbox, want the 7 of the closed client", n)
	}
	lo := openLog(t, other)
	ctx, cancel := context.WithCancel(t.Context())
	var bg sync.WaitGroup
	bg.Go(func() { lo.RunMover(ctx, slog.New(slog.DiscardHandler)) })
	defer func() { cancel(); bg.Wait() }()
	testutil.Eventually(t, 30*time.Second, func() error { // the mover's idle round, no reader
		if in, log := len(keysOf(t, other, bucketInbox)), len(keysOf(t, other, bucketAudit)); in != 0 || log != 7 {
			return fmt.Errorf("%d in the inbox, %d in the log; want 0 and 7", in, log)
		}
		return nil
	})
	checkLog(t, other, lo, want)
}

// Prune and Count number the inbox first: records still in it count and age like the others.
func TestInboxPruneAndCount(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	a, b := openEtcd(t, etcd), openEtcd(t, etcd)
	la, lb := openLog(t, a), openLog(t, b)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 130 { // more than one move
		if err := la.Append(Event{TsMs: now.Add(-48 * time.Hour).UnixMilli(), Kind: KindLogin, Outcome: "old"}); err != nil {
			t.Fatal(err)
		}
		if i%26 == 0 {
			if err := la.Append(Event{TsMs: now.UnixMilli(), Kind: KindLogin, Outcome: "new"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(keysOf(t, a, bucketInbox)); n != 135 {
		t.Fatalf("%d records in the inbox, want 135", n)
	}
	if n, err := lb.Count(); err != nil || n != 135 {
		t.Fatalf("count %d, %v; want 135", n, err)
	}
	for range 3 { // appended after the count, before the prune: old, and pruned too
		if err := la.Append(Event{TsMs: now.Add(-48 * time.Hour).UnixMilli(), Kind: KindLogin, Outcome: "old"}); err != nil {
			t.Fatal(err)
		}
	}
	// 138 records: keep 100.
	if n, err := lb.Prune(t.Context(), Retention{MaxRecords: 100}, now); err != nil || n != 38 {
		t.Fatalf("prune by size deleted %d, %v; want 38", n, err)
	}
	if n, err := lb.Count(); err != nil || n != 100 {
		t.Fatalf("count %d, %v; want 100", n, err)
	}
	got, err := lb.Query(Filter{Limit: 1})
	if err != nil || len(got) != 1 || got[0].Seq != 138 {
		t.Fatalf("newest %+v, %v; want seq 138", got, err)
	}
	if in := len(keysOf(t, a, bucketInbox)); in != 0 {
		t.Fatalf("%d left in the inbox", in)
	}
	// By age, in number order up to the first young record: the new ones are numbered 2, 29,
	// 56, 83 and 110, so 39..55 go.
	if n, err := lb.Prune(t.Context(), Retention{MaxAge: 24 * time.Hour}, now); err != nil || n != 17 {
		t.Fatalf("prune by age deleted %d, %v; want 17", n, err)
	}
	if got, err := lb.Query(Filter{Limit: 200}); err != nil || len(got) != 83 || got[82].Seq != 56 || got[82].Outcome != "new" {
		t.Fatalf("after the prune by age: %d records, oldest %+v, %v", len(got), got[len(got)-1], err)
	}
}

// On bbolt nothing changes: records are numbered as they are appended and no inbox is made.
func TestBoltHasNoInbox(t *testing.T) {
	t.Parallel()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "a.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	kvs := boltkv.New(db)
	defer kvs.Close()
	l := openLog(t, kvs)
	if err := l.Append(Event{Kind: KindAdmin, Outcome: "a"}, Event{Kind: KindAdmin, Outcome: "b"}); err != nil {
		t.Fatal(err)
	}
	if l.inbox || len(keysOf(t, kvs, bucketInbox)) != 0 {
		t.Fatal("bbolt uses the inbox")
	}
	if err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAudit)
		if tx.Bucket(bucketInbox) != nil || b.Sequence() != 2 || b.Get([]byte{0, 0, 0, 0, 0, 0, 0, 2}) == nil {
			return fmt.Errorf("bbolt layout changed: inbox %v, sequence %d", tx.Bucket(bucketInbox) != nil, b.Sequence())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
