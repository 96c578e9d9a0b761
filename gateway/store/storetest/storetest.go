// Package storetest opens the gateway's bbolt file, with its audit log, for fuzz harnesses.
package storetest

import (
	"path/filepath"
	"testing"

	"telematics/gateway/audit"
	"telematics/gateway/store"
)

// OpenNoSync opens a store in a temporary dir, without fsync, and its audit log; the test's
// cleanup closes it. The fuzzers look for logic errors, not durability: without fsync an input
// costs microseconds, not milliseconds. Never outside a fuzz harness.
func OpenNoSync(tb testing.TB) (*store.Store, *audit.Log) {
	tb.Helper()
	st, err := store.OpenFile(filepath.Join(tb.TempDir(), "g.db"), store.Options{NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	lg, err := audit.Open(st.KV())
	if err != nil {
		tb.Fatal(err)
	}
	return st, lg
}
