package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/internal/testutil"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/vehicletest"
)

// topicBus records what the router publishes: replies by command id, and commands to cars.
type topicBus struct {
	mu       sync.Mutex
	replies  map[string][]protocol.Reply
	commands int
}

func (b *topicBus) Publish(_ context.Context, topic string, _ byte, _ bool, p []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, suffix, ok := protocol.ParseVehicleTopic(topic); ok && suffix == protocol.SuffixCmd {
		b.commands++
		return nil
	}
	var rep protocol.Reply
	if err := json.Unmarshal(p, &rep); err != nil {
		return err
	}
	b.replies[rep.ID] = append(b.replies[rep.ID], rep)
	return nil
}
func (b *topicBus) Subscribe(context.Context, string, byte, mqttc.Handler) error { return nil }
func (b *topicBus) Connected() bool                                              { return true }
func (b *topicBus) Close() error                                                 { return nil }

// statuses is the replies to id, in order.
func (b *topicBus) statuses(id string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, r := range b.replies[id] {
		out = append(out, r.Status)
	}
	return out
}

// gatewayRig is one gateway's router (no replica) on a bbolt store, with a car on alice's
// whitelist that is online, and a fake clock.
type gatewayRig struct {
	t     *testing.T
	path  string
	st    *store.Store
	log   *audit.Log
	r     *Router
	bus   *topicBus
	clk   *clocktest.Fake
	owner *vehicletest.Phone
	vin   string
}

func newGatewayRig(t *testing.T) *gatewayRig {
	g := &gatewayRig{t: t, path: filepath.Join(t.TempDir(), "g.db"), bus: &topicBus{replies: map[string][]protocol.Reply{}},
		clk: clocktest.New(time.UnixMilli(1_800_000_000_000)), vin: vehicletest.VIN,
		owner: vehicletest.NewPhone(t, "alice", protocol.RoleOwner, protocol.ChannelCloud)}
	st, err := store.Open(g.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.AddVehicles([]store.Vehicle{{VIN: g.vin, Users: map[string]protocol.Role{"alice": protocol.RoleOwner}}}); err != nil {
		t.Fatal(err)
	}
	lg, err := audit.Open(st.KV())
	if err != nil {
		t.Fatal(err)
	}
	gw, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	keys := staticKeys{wl: &protocol.Whitelist{V: protocol.Version, VIN: g.vin, Version: 1, Keys: []protocol.WhitelistKey{g.owner.Key}}, s: gw}
	cfg := DefaultConfig()
	cfg.RatePerMinute, cfg.ResultGrace = 0, time.Second
	r, err := New(cfg, st, lg, g.bus, keys, nil, g.clk, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	g.st, g.log, g.r = st, lg, r
	b, _ := json.Marshal(protocol.VehicleStatus{V: protocol.Version, Status: protocol.StatusOnline, TsMs: g.clk.Now().UnixMilli()})
	r.onStatus(mqttc.Message{Topic: protocol.VehicleTopic(g.vin, protocol.SuffixStatus), Payload: b})
	return g
}

// accept submits a signed unlock from alice and returns its id once it has been accepted.
func (g *gatewayRig) accept() string {
	cmd := vehicletest.NewCommand(g.vin, protocol.ActionUnlock, g.clk.Now())
	b, _ := json.Marshal(protocol.AppRequest{V: protocol.Version, Command: g.owner.Sign(g.t, cmd)})
	<-g.r.Submit("alice", "alice-app", b)
	if got := g.bus.statuses(cmd.ID); len(got) != 1 || got[0] != protocol.ReplyAccepted {
		g.t.Fatalf("replies to %s: %v, want accepted", cmd.ID, got)
	}
	return cmd.ID
}

// carAnswers delivers the car's "executed" for id to the router.
func (g *gatewayRig) carAnswers(id string) {
	b, _ := json.Marshal(protocol.Result{V: protocol.Version, ID: id, Status: protocol.ResultExecuted, TsMs: g.clk.Now().UnixMilli()})
	g.r.onResult(mqttc.Message{Topic: protocol.VehicleTopic(g.vin, protocol.SuffixResult), Payload: b})
}

// resultRecords is the result records of id in lg.
func resultRecords(t *testing.T, lg *audit.Log, id string) []audit.Event {
	evs, err := lg.Query(audit.Filter{Kind: audit.KindResult, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Event
	for _, e := range evs {
		if e.CmdID == id {
			out = append(out, e)
		}
	}
	return out
}

// One gateway relays a car's result to the app without waiting for a commit: the result's
// audit record joins the next group commit, and a store closed right after the relay (a
// gateway stopping) has it on disk: nothing relayed is lost but what a crash takes before the
// commit (docs/OPERATIONS.md).
func TestResultRelayedThenRecordedInTheNextCommit(t *testing.T) {
	g := newGatewayRig(t)

	id := g.accept()
	g.carAnswers(id)
	if got := g.bus.statuses(id); len(got) != 2 || got[1] != protocol.ReplyExecuted {
		t.Fatalf("replies to %s: %v, want accepted, executed", id, got)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if recs := resultRecords(t, g.log, id); len(recs) != 1 || recs[0].Outcome != protocol.ReplyExecuted {
			return fmt.Errorf("result records of %s: %+v", id, recs)
		}
		return nil
	})

	// The store closes right after the relay, before anything waited for a commit.
	last := g.accept()
	g.carAnswers(last)
	if got := g.bus.statuses(last); len(got) != 2 || got[1] != protocol.ReplyExecuted {
		t.Fatalf("replies to %s: %v, want accepted, executed", last, got)
	}
	if err := g.st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(g.path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	lg, err := audit.Open(st.KV())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{id, last} {
		if recs := resultRecords(t, lg, id); len(recs) != 1 || recs[0].Outcome != protocol.ReplyExecuted || recs[0].User != "alice" {
			t.Fatalf("after the store closed, result records of %s: %+v", id, recs)
		}
	}
}

// An idle gateway arms no expiry sweep and no twin flush; an accepted command arms the sweep
// for its expiry plus the grace, and a car that stays silent gets its command answered
// "expired" then, once.
func TestIdleGatewaySweepsAtTheDeadline(t *testing.T) {
	g := newGatewayRig(t)
	waiters := func(n int) {
		t.Helper()
		testutil.Eventually(t, 10*time.Second, func() error {
			if got := g.clk.Waiters(); got != n {
				return fmt.Errorf("%d timers and tickers, want %d", got, n)
			}
			return nil
		})
	}
	// The first sweep, the twin flush and the id pruning; after the first sweep, with nothing
	// pending, only the two tickers.
	waiters(3)
	g.clk.Advance(sweepInterval)
	waiters(2)

	id := g.accept()
	waiters(3) // the sweep, armed for the command's deadline
	g.clk.Advance(protocol.DefaultCommandLifetimeMs * time.Millisecond)
	if got := g.bus.statuses(id); len(got) != 1 {
		t.Fatalf("replies to %s before expiry plus grace: %v", id, got)
	}
	g.clk.Advance(g.r.cfg.ResultGrace)
	testutil.Eventually(t, 10*time.Second, func() error {
		if got := g.bus.statuses(id); len(got) != 2 || got[1] != protocol.ReplyExpired {
			return fmt.Errorf("replies to %s: %v, want accepted, expired", id, got)
		}
		return nil
	})
	waiters(1) // idle again: the twin was flushed, nothing is pending; only the id pruning
	g.clk.Advance(time.Minute)
	if got := g.bus.statuses(id); len(got) != 2 {
		t.Fatalf("replies to %s after more time: %v", id, got)
	}

	// The car's online status was flushed by the first flush; its next change arms another.
	storedStatus := func() string {
		twins, err := g.st.LoadTwins()
		if err != nil || len(twins) != 1 {
			t.Fatalf("stored twins %+v, %v", twins, err)
		}
		return twins[0].Status
	}
	if got := storedStatus(); got != protocol.StatusOnline {
		t.Fatalf("stored status %q, want online", got)
	}
	b, _ := json.Marshal(protocol.VehicleStatus{V: protocol.Version, Status: protocol.StatusOffline, TsMs: g.clk.Now().UnixMilli()})
	g.r.onStatus(mqttc.Message{Topic: protocol.VehicleTopic(g.vin, protocol.SuffixStatus), Payload: b})
	waiters(2) // the flush, armed by the change
	g.clk.Advance(g.r.cfg.TwinFlushInterval)
	testutil.Eventually(t, 10*time.Second, func() error {
		if got := storedStatus(); got != protocol.StatusOffline {
			return fmt.Errorf("stored status %q, want offline", got)
		}
		return nil
	})
	waiters(1)
}
