package audit

import (
	"errors"
	"testing"

	"telematics/gateway/kv"
)

// The observer sees an event once its transaction commits, and never an event of a
// transaction that failed (the group committer then retries each write alone: counted once).
func TestObserveSeesCommittedEventsOnly(t *testing.T) {
	t.Parallel()
	backends(t, testObserveSeesCommittedEventsOnly)
}

func testObserveSeesCommittedEventsOnly(t *testing.T, open func() kv.Store) {
	kvs := open()
	l := openLog(t, kvs)
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
