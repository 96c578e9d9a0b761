package audit

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/kv"
	"telematics/gateway/kv/boltkv"
	"telematics/gateway/kv/etcdkv"
	"telematics/internal/etcdtest"
)

// backends runs test once for each kind of store the log lives in: a bbolt file (numbered
// at once) and a real embedded etcd (through the inbox). open gives a store client; every
// client opened in one (sub)test shares the same data.
func backends(t *testing.T, test func(t *testing.T, open func() kv.Store)) {
	t.Run("bbolt", func(t *testing.T) {
		t.Parallel()
		db, err := bolt.Open(filepath.Join(t.TempDir(), "a.db"), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		kvs := boltkv.New(db)
		t.Cleanup(func() { kvs.Close() })
		test(t, func() kv.Store { return kvs })
	})
	t.Run("etcd", func(t *testing.T) {
		t.Parallel()
		etcd := etcdtest.Start(t)
		test(t, func() kv.Store { return openEtcd(t, etcd) })
	})
}

// openEtcd opens a client of etcd under the test's own prefix, closed at the test's end.
func openEtcd(t *testing.T, etcd *etcdtest.Cluster) *etcdkv.Store {
	t.Helper()
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: etcd.Endpoints(), Prefix: "/" + t.Name() + "/", Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openLog(t *testing.T, kvs kv.Store) *Log {
	t.Helper()
	l, err := Open(kvs)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// storedSizes returns the byte size of every stored record.
func storedSizes(t *testing.T, kvs kv.Store) []int {
	t.Helper()
	var out []int
	if err := kvs.View(t.Context(), func(tx kv.Tx) error {
		out = out[:0]
		return tx.Scan(bucketAudit, nil, nil, func(_, v []byte) error {
			out = append(out, len(v))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// Issue 8, case 3: a 60,000-character user name (or client id, or detail) must not reach the
// durable log whole. Every field is cut with a marker, and no record exceeds MaxRecordBytes,
// even when JSON escaping would multiply its bytes.
func TestAuditRecordIsBounded(t *testing.T) {
	t.Parallel()
	backends(t, testAuditRecordIsBounded)
}

func testAuditRecordIsBounded(t *testing.T, open func() kv.Store) {
	kvs := open()
	l := openLog(t, kvs)
	long := strings.Repeat("x", 60_000)
	escaped := strings.Repeat("\x01", 60_000) // \u0001: six bytes each once encoded
	evs := []Event{
		{TsMs: 1, Kind: KindLogin, User: long, ClientID: long, Outcome: "refused", Reason: "unauthenticated"},
		{TsMs: 2, Kind: KindVehicle, VIN: long, CmdID: long, Action: long, Outcome: long, Reason: long, Detail: long},
		{TsMs: 3, Kind: KindLogin, User: escaped, ClientID: escaped, VIN: escaped, CmdID: escaped, Action: escaped,
			Outcome: escaped, Reason: escaped, Detail: escaped},
		{TsMs: 4, Kind: KindLogin, User: strings.Repeat("é", 30_000)}, // cut on a rune boundary
		{TsMs: 5, Kind: KindLogin, User: "alice", Outcome: "ok"},      // short records stay whole
	}
	if err := l.Append(evs...); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Count(); err != nil { // numbers the inbox on etcd
		t.Fatal(err)
	}
	for i, n := range storedSizes(t, kvs) {
		if n > MaxRecordBytes {
			t.Errorf("record %d stored with %d bytes, more than %d", i+1, n, MaxRecordBytes)
		}
	}
	got, err := l.Query(Filter{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(evs) {
		t.Fatalf("%d records, want %d", len(got), len(evs))
	}
	byTs := map[int64]Event{}
	for _, e := range got {
		byTs[e.TsMs] = e
	}
	if u := byTs[1].User; len(u) > MaxFieldBytes || !strings.Contains(u, "…[truncated ") || !strings.HasPrefix(u, "xxx") {
		t.Errorf("long user stored as %d bytes %.60q…", len(u), u)
	}
	if d := byTs[2].Detail; len(d) > MaxDetailBytes || !strings.Contains(d, "bytes]") {
		t.Errorf("long detail stored as %d bytes", len(d))
	}
	if u := byTs[4].User; !json.Valid([]byte(`"`+u+`"`)) || !strings.HasPrefix(u, "éé") || strings.ContainsRune(u, '\uFFFD') {
		t.Errorf("multi-byte user cut inside a rune: %.40q", u)
	}
	if e := byTs[5]; e.User != "alice" || e.Outcome != "ok" {
		t.Errorf("short record changed: %+v", e)
	}
}

// Issue 8, case 3: the log has retention. Prune deletes the records beyond MaxRecords and
// those older than MaxAge, oldest first, in bounded transactions, and keeps the rest.
func TestAuditRetention(t *testing.T) {
	t.Parallel()
	backends(t, testAuditRetention)
}

func testAuditRetention(t *testing.T, open func() kv.Store) {
	l := openLog(t, open())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// 2,500 records a day old, then 10 of the last minute.
	var evs []Event
	for i := range 2500 {
		evs = append(evs, Event{TsMs: now.Add(-24*time.Hour).UnixMilli() + int64(i), Kind: KindLogin, Outcome: "old"})
	}
	for i := range 10 {
		evs = append(evs, Event{TsMs: now.Add(-time.Minute).UnixMilli() + int64(i), Kind: KindLogin, Outcome: "new"})
	}
	for part := range slices.Chunk(evs, 100) { // etcd carries at most 128 writes per transaction
		if err := l.Append(part...); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()

	// By size: 2,510 records, keep 2,000: the 510 oldest go.
	n, err := l.Prune(ctx, Retention{MaxRecords: 2000}, now)
	if err != nil || n != 510 {
		t.Fatalf("prune by size: %d deleted, %v; want 510", n, err)
	}
	if c, _ := l.Count(); c != 2000 {
		t.Fatalf("%d records left, want 2000", c)
	}
	// By age: everything older than an hour goes, in more than one transaction (pruneBatch).
	n, err = l.Prune(ctx, Retention{MaxAge: time.Hour}, now)
	if err != nil || n != 1990 {
		t.Fatalf("prune by age: %d deleted, %v; want 1990", n, err)
	}
	got, _ := l.Query(Filter{Limit: 100})
	if len(got) != 10 {
		t.Fatalf("%d records left, want the 10 new ones", len(got))
	}
	for _, e := range got {
		if e.Outcome != "new" {
			t.Fatalf("kept an old record: %+v", e)
		}
	}
	// Nothing more to do; appends go on with the next sequence numbers.
	if n, err := l.Prune(ctx, Retention{MaxAge: time.Hour, MaxRecords: 2000}, now); err != nil || n != 0 {
		t.Fatalf("second prune: %d, %v", n, err)
	}
	if err := l.Append(Event{TsMs: now.UnixMilli(), Kind: KindLogin, Outcome: "after"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Query(Filter{Limit: 1}); len(got) != 1 || got[0].Outcome != "after" || got[0].Seq != 2511 {
		t.Fatalf("append after prune: %+v", got)
	}
	// Zero bounds keep everything; bad bounds are reported with their keys.
	if n, _ := l.Prune(ctx, Retention{}, now.Add(1000*time.Hour)); n != 0 {
		t.Fatalf("zero retention deleted %d", n)
	}
	err = Retention{MaxAge: -time.Hour, MaxRecords: -1}.Validate()
	for _, key := range []string{"audit.retention.max_age", "audit.retention.max_records", "audit.retention.sweep_interval"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("Validate does not name %s: %v", key, err)
		}
	}
}
