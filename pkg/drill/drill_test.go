package drill

import (
	"context"
	"testing"
)

// The drill with 50 cars, broker and gateway stopped: every legitimate local unlock succeeds,
// no revoked or foreign key does, and the journals reach the audit log.
func TestOutageDrill(t *testing.T) {
	cars := 50
	if testing.Short() {
		cars = 6
	}
	rep := Run(context.Background(), Options{Cars: cars, Dir: t.TempDir()})
	t.Log("\n" + rep.Summary())
	if !rep.OK {
		t.Fatalf("drill failed: %+v", rep.Problems)
	}
	if rep.Paths["local"].Successes != cars || rep.Paths["cloud"].Successes != cars {
		t.Fatalf("unlocks: cloud %d, local %d of %d", rep.Paths["cloud"].Successes, rep.Paths["local"].Successes, cars)
	}
	if rep.IllegitimateSucceeded != 0 || rep.IllegitimateAttempts < cars {
		t.Fatalf("illegitimate: %d of %d succeeded", rep.IllegitimateSucceeded, rep.IllegitimateAttempts)
	}
	if rep.Refusals["key_unknown"] != cars || rep.Refusals["key_revoked"] != (cars+2)/3 {
		t.Fatalf("refusals %v: want %d key_unknown and %d key_revoked", rep.Refusals, cars, (cars+2)/3)
	}
	if rep.JournalFiled < rep.JournalExpected {
		t.Fatalf("journal: %d of %d filed", rep.JournalFiled, rep.JournalExpected)
	}
}
