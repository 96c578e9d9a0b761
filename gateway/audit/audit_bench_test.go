package audit_test

import (
	"path/filepath"
	"testing"

	"telematics/gateway/audit"
	"telematics/gateway/store"
)

// openBenchLog opens the audit log in a real gateway store (bbolt, fsync on commit, group
// commit) in b.TempDir(), as the gateway opens it.
func openBenchLog(b *testing.B) *audit.Log {
	b.Helper()
	st, err := store.Open(filepath.Join(b.TempDir(), "gateway.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	l, err := audit.Open(st.KV())
	if err != nil {
		b.Fatal(err)
	}
	return l
}

var benchEvent = audit.Event{TsMs: 1_700_000_000_000, Kind: audit.KindCommand, User: "alice",
	ClientID: "alice-phone1", VIN: "WVWZZZ1JZXW000001", CmdID: "0190f3a2-7c1e-7d4b-9a55-3f1c2b4d5e6f",
	Action: "unlock", Outcome: "accepted"}

// BenchmarkAppend is one durable audit record, as every command decision writes one:
// "sequential" is a lone writer (each Append waits for its own fsync); "parallel" has 64
// concurrent writers sharing commits, which is how a busy gateway writes.
func BenchmarkAppend(b *testing.B) {
	for _, w := range []struct{ name string }{{"group-commit"}} {
		b.Run(w.name+"/sequential", func(b *testing.B) {
			l := openBenchLog(b)
			b.ReportAllocs()
			for b.Loop() {
				if err := l.Append(benchEvent); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(w.name+"/parallel", func(b *testing.B) {
			l := openBenchLog(b)
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
