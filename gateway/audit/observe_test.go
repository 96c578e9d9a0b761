package audit

import (
	"errors"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/kv"
	"telematics/gateway/kv/boltkv"
)

// The observer sees an event once its transaction commits, and never an event of a
// transaction that failed (the group committer then retries each write alone: counted once).
func TestObserveSeesCommittedEventsOnly(t *testing.T) {
	t.Parallel()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "a.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	kvs := boltkv.New(db)
	defer kvs.Close()
	l, err := Open(kvs)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	l.Observe(func(e Event) { seen = append(seen, e.Outcome) })
	defer l.Observe(nil)

	failed := errors.New("a later write in the transaction failed")
	if err := kvs.Update(t.Context(), func(tx kv.Tx) error {
		if err := l.AppendTx(tx, Event{Kind: KindCommand, Outcome: "rolled_back"}); err != nil {
			return err
		}
		return failed
	}); !errors.Is(err, failed) {
		t.Fatal(err)
	}
	if err := kvs.Update(t.Context(), func(tx kv.Tx) error {
		return l.AppendTx(tx, Event{Kind: KindCommand, Outcome: "accepted"}, Event{Kind: KindResult, Outcome: "executed"})
	}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || seen[0] != "accepted" || seen[1] != "executed" {
		t.Fatalf("observed %q, want the two committed events", seen)
	}
	l.Observe(nil)
	if err := l.Append(Event{Kind: KindAdmin, Outcome: "ok"}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 {
		t.Fatal("an event was observed after the observer was removed")
	}
}
