package drill

import (
	"context"
	"strings"
	"testing"
	"time"
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
	if w, l := rep.Fallback.CloudWait, rep.Fallback.Link; w.Attempts != cars || l.Attempts != cars || l.Successes != cars {
		t.Fatalf("fallback split: cloud wait %+v, local link %+v", w, l)
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

// TestDrillSummarySplitsTheFallback: the local path's figure is the whole fallback, the
// cloud's timeout included; the summary shows the wait for the cloud and the local link's own
// time apart, labelled, so "local p50 1010 ms" is not read as a slow local link.
func TestDrillSummarySplitsTheFallback(t *testing.T) {
	rep := Report{OK: true, Cars: 2, CloudTimeoutMs: 1000, Paths: map[string]*PathStats{
		"cloud": {Attempts: 2, Successes: 2, P50Ms: 5},
		"local": {Attempts: 2, Successes: 2, P50Ms: 1010},
	}}
	rep.Fallback.CloudWait = PathStats{Attempts: 2, Successes: 2, P50Ms: 1000}
	rep.Fallback.Link = PathStats{Attempts: 2, Successes: 2, P50Ms: 10}
	s := rep.Summary()
	for _, want := range []string{"outage drill with 2 cars", "local, tap to answer (fallback)", "of which waiting for the cloud", "1000.00",
		"of which the local link itself", "10.00", "--cloud-timeout (" + time.Second.String() + ")"} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
}

// TestDrillSummaryCountsInTheSingular: "outage drill with 1 car", not "1 cars".
func TestDrillSummaryCountsInTheSingular(t *testing.T) {
	rep := Report{OK: true, Cars: 1, Paths: map[string]*PathStats{"cloud": {}, "local": {}}}
	if s := rep.Summary(); !strings.Contains(s, "outage drill with 1 car: PASSED") {
		t.Fatalf("summary:\n%s", s)
	}
}
