package commands

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/internal/testutil"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
)

// A command whose car never answers is answered "expired" by the router's own sweep, once its
// expiry plus the result grace has passed on the router's clock, and not before.
func TestExpirySweepRunsByItself(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "g.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	lg, err := audit.Open(st.KV())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.UnixMilli(1_800_000_000_000)
	clk := clocktest.New(t0)
	bus := &replies{}
	cfg := DefaultConfig()
	cfg.ResultGrace = time.Second
	r, err := New(cfg, st, lg, bus, nil, nil, clk, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	// An accepted command, expiring in 5 s, whose car stays silent.
	r.mu.Lock()
	r.pending["c-silent"] = &pending{user: "alice", session: "alice-1", vin: "1HGCM82633A004352", action: "honk",
		expiresAtMs: t0.Add(5 * time.Second).UnixMilli(), sentMs: t0.Add(20 * time.Millisecond).UnixMilli()}
	r.mu.Unlock()
	// The housekeeping loop has made its three tickers (sweep, twin flush, id pruning).
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := clk.Waiters(); n < 3 {
			return fmt.Errorf("%d tickers", n)
		}
		return nil
	})
	replied := func() []protocol.Reply {
		bus.mu.Lock()
		defer bus.mu.Unlock()
		return append([]protocol.Reply(nil), bus.got...)
	}

	// Expiry passed, the grace not yet: sweeps may run, and leave it pending.
	clk.Advance(5*time.Second + 500*time.Millisecond)
	clk.Advance(sweepInterval)
	if got := replied(); len(got) != 0 || r.PendingCount() != 1 {
		t.Fatalf("answered %+v within the grace; pending %d", got, r.PendingCount())
	}

	// Past expiry plus grace: the next sweep answers "expired", exactly once.
	clk.Advance(time.Second)
	testutil.Eventually(t, 5*time.Second, func() error {
		if got := replied(); len(got) != 1 {
			return fmt.Errorf("replies %+v", got)
		}
		return nil
	})
	got := replied()[0]
	if got.ID != "c-silent" || got.Status != protocol.ReplyExpired || got.Reason != protocol.ReasonExpired {
		t.Fatalf("reply %+v, want expired/expired for c-silent", got)
	}
	if r.PendingCount() != 0 {
		t.Fatalf("still pending: %d", r.PendingCount())
	}
	clk.Advance(time.Second)
	clk.Advance(sweepInterval)
	if n := len(replied()); n != 1 {
		t.Fatalf("%d replies after more sweeps, want 1", n)
	}
	// Its audit record says when it was sent to the car (the console's timeline shows it). One
	// gateway commits it after the reply, with the next group commit: wait for it.
	testutil.Eventually(t, 10*time.Second, func() error {
		evs, err := lg.Query(audit.Filter{Kind: audit.KindResult})
		if err != nil || len(evs) != 1 || evs[0].Outcome != protocol.ReplyExpired || evs[0].SentMs != t0.Add(20*time.Millisecond).UnixMilli() || evs[0].CarMs != 0 {
			return fmt.Errorf("expiry record %+v %v: want expired, sent at t0+20ms, no car time", evs, err)
		}
		return nil
	})
}
