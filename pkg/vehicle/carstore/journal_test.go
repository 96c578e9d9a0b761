package carstore

import (
	"path/filepath"
	"sync"
	"telematics/pkg/protocol"
	"testing"
	"time"
)

const testVIN = "WVWZZZ1JZXW000001"

var t0 = time.UnixMilli(1_760_000_000_000)

func openTestStore(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(filepath.Join(dir, File))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func journal(t *testing.T, st *Store, vin string) []protocol.VehicleEvent {
	t.Helper()
	evs, err := st.Journal(vin, 0, MaxJournalEntries+10)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func TestJournalBounded(t *testing.T) {
	st := openTestStore(t, t.TempDir())
	ev := protocol.VehicleEvent{V: protocol.Version, VIN: testVIN, Kind: protocol.EventLocalCommand, Status: protocol.ResultRejected,
		Reason: protocol.ReasonSignatureInvalid, TsMs: t0.UnixMilli()}
	// Concurrent appends share fsyncs (db.Batch).
	var wg sync.WaitGroup
	for i := 0; i < MaxJournalEntries; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := st.AppendJournal(testVIN, ev); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// Beyond the bound a refusal is counted in a summary entry, not given one of its own.
	if seq, err := st.AppendJournal(testVIN, ev); err != nil || seq != 0 {
		t.Fatalf("append to a full journal: seq %d, %v", seq, err)
	}
	// An executed command is journaled all the same.
	exec := ev
	exec.Status, exec.Reason = protocol.ResultExecuted, ""
	if err := st.CommitCommand(testVIN, Commit{ID: "x1", ExpiresAtMs: t0.UnixMilli() + 1000, NowMs: t0.UnixMilli(), Event: &exec}); err != nil {
		t.Fatal(err)
	}
	evs := journal(t, st, testVIN)
	if len(evs) != MaxJournalEntries+1 || evs[len(evs)-1].Status != protocol.ResultExecuted || evs[len(evs)-1].Seq != MaxJournalEntries+1 {
		t.Fatalf("journal: %d entries, last %+v", len(evs), evs[len(evs)-1])
	}
	// Acknowledgements free room, which the summary takes first; seqs are never reused.
	seqs := []uint64{1, 2, 3}
	if err := st.DeleteJournal(testVIN, seqs); err != nil {
		t.Fatal(err)
	}
	seq, err := st.AppendJournal(testVIN, ev)
	if err != nil || seq != MaxJournalEntries+3 {
		t.Fatalf("append after delete: seq %d, %v", seq, err)
	}
}
