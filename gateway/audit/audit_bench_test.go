package audit_test

import (
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/audit"
	"telematics/gateway/store"
)

// openBenchLog opens the audit log in a real gateway store (bbolt, fsync on commit) in
// b.TempDir(): with group commit as the gateway opens it (store.Write), or with db.Batch (the
// store's 2 ms batch delay), as audit.Open alone does.
func openBenchLog(b *testing.B, groupCommit bool) *audit.Log {
	b.Helper()
	st, err := store.Open(filepath.Join(b.TempDir(), "gateway.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	open := audit.Open
	if groupCommit {
		open = func(db *bolt.DB) (*audit.Log, error) { return audit.OpenWith(db, st.Write) }
	}
	l, err := open(st.DB())
	if err != nil {
		b.Fatal(err)
	}
	return l
}

var benchEvent = audit.Event{TsMs: 1_700_000_000_000, Kind: audit.KindCommand, User: "alice",
	ClientID: "alice-phone1", VIN: "WVWZZZ1JZXW000001", CmdID: "0190f3a2-7c1e-7d4b-9a55-3f1c2b4d5e6f",
	Action: "unlock", Outcome: "accepted"}

// BenchmarkAppend is one durable audit record, as every command decision writes one:
// "sequential" is a lone writer (each Append waits for its own fsync, and with db.Batch for the
// batch delay too); "parallel" has 64 concurrent writers sharing commits, which is how a busy
// gateway writes.
func BenchmarkAppend(b *testing.B) {
	for _, w := range []struct {
		name        string
		groupCommit bool
	}{{"group-commit", true}, {"db.Batch", false}} {
		b.Run(w.name+"/sequential", func(b *testing.B) {
			l := openBenchLog(b, w.groupCommit)
			b.ReportAllocs()
			for b.Loop() {
				if err := l.Append(benchEvent); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(w.name+"/parallel", func(b *testing.B) {
			l := openBenchLog(b, w.groupCommit)
			b.ReportAllocs()
			b.SetParallelism(32)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := l.Append(benchEvent); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
