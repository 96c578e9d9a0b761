package audit

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"telematics/gateway/kv"
	"telematics/internal/testutil"
	"telematics/pkg/clock/clocktest"
)

// RunRetention prunes when it starts and then by itself every SweepInterval of its clock:
// records that age past MaxAge while it runs go at the next sweep, not before.
func TestRunRetentionSweepsOnItsInterval(t *testing.T) {
	backends(t, testRunRetentionSweepsOnItsInterval)
}

func testRunRetentionSweepsOnItsInterval(t *testing.T, open func() kv.Store) {
	l := openLog(t, open())
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clocktest.New(t0)
	if err := l.Append(
		Event{TsMs: t0.Add(-2 * time.Hour).UnixMilli(), Kind: KindLogin, Outcome: "old"},
		Event{TsMs: t0.Add(-30 * time.Minute).UnixMilli(), Kind: KindLogin, Outcome: "aging"},
		Event{TsMs: t0.UnixMilli(), Kind: KindLogin, Outcome: "new"},
	); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.RunRetention(ctx, Retention{MaxAge: time.Hour, SweepInterval: 10 * time.Minute}, clk, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() { cancel(); <-done })

	count := func(want int) func() error {
		return func() error {
			if n, err := l.Count(); err != nil || n != want {
				return fmt.Errorf("%d records (%v), want %d", n, err, want)
			}
			return nil
		}
	}
	// The sweep at the start removes the record older than an hour.
	testutil.Eventually(t, 5*time.Second, count(2))
	// Waiting for the ticker also means the first sweep is over: Advance reaches it.
	testutil.Eventually(t, 5*time.Second, func() error {
		if clk.Waiters() != 1 {
			return fmt.Errorf("%d waiters, want the sweep's ticker", clk.Waiters())
		}
		return nil
	})
	// 40 minutes on, "aging" is 70 minutes old. Each Advance either hands the loop a tick or
	// finds one it has not read yet; either way a sweep runs after the clock reads 40 minutes.
	for range 4 {
		clk.Advance(10 * time.Minute)
	}
	testutil.Eventually(t, 5*time.Second, count(1))
	got, _ := l.Query(Filter{Limit: 10})
	if len(got) != 1 || got[0].Outcome != "new" {
		t.Fatalf("kept %+v, want only the new record", got)
	}
}
