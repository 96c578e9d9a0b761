package commands

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/store"
	"telematics/internal/etcdtest"
	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// Two routers, as two gateway replicas run them, each on its own client of one real
// (embedded) etcd, record the decision of the same command id at the same instant: their seen
// maps are their own, so the store decides, and exactly one takes the id.
func TestClusterCommandIDDecidedOnce(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	gw, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	router := func() (*Router, *audit.Log) {
		kvs, err := etcdkv.Open(etcdkv.Options{Endpoints: etcd.Endpoints(), Prefix: "/commands-test/", Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		st, err := store.OpenKV(kvs)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		lg, _ := audit.Open(st.KV())
		r, err := New(Config{Shards: 1, ResultGrace: time.Second}, st, lg, &replies{}, noKeys{gw}, nil, nil, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r, lg
	}
	a, lg := router()
	b, _ := router()
	expires := time.Now().Add(time.Minute).UnixMilli()
	const rounds = 10
	for i := range rounds {
		id := fmt.Sprint("cmd-", i)
		ev := audit.Event{TsMs: 1, Kind: audit.KindCommand, User: "alice", CmdID: id, Outcome: protocol.ReplyAccepted}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for j, r := range []*Router{a, b} {
			wg.Go(func() {
				<-start
				errs[j] = r.recordDecision(ev, id, expires, true)
			})
		}
		close(start)
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, errDecidedElsewhere):
				t.Fatalf("%s: %v, want success or errDecidedElsewhere", id, err)
			}
		}
		if won != 1 {
			t.Fatalf("%s decided %d times, want once (errors %v)", id, won, errs)
		}
		// A refusal of a replay is still audited, with the id remembered already.
		if err := b.recordDecision(ev, id, expires, false); err != nil {
			t.Fatalf("a refusal's record of a taken id: %v", err)
		}
	}
	events, err := lg.Query(audit.Filter{Kind: audit.KindCommand, Limit: 100})
	if err != nil || len(events) != 2*rounds {
		t.Fatalf("%d command records, %v; want %d (one decision and one refusal per id)", len(events), err, 2*rounds)
	}
}

// A replica's decision rests on what it read when it commits: the vehicle's record is read in
// the transaction that records the decision, so a change another replica commits between the
// checks and the commit makes the decision run again, and a car decommissioned meanwhile gets
// no command.
func TestClusterDecisionRunsAgainOnAChangeItRestsOn(t *testing.T) {
	c := newClusterRig(t)
	a := c.replica("a")
	c.online(a)
	c.answer = true
	other := c.store() // another replica's connection

	// A change to the vehicle's record: the decision runs again and is accepted.
	var runs atomic.Int32
	hook := func(string) {
		if runs.Add(1) == 1 {
			if err := other.Update(context.Background(), func(tx kv.Tx) error {
				return store.UpdateVehicleTx(tx, c.vin, func(v *store.Vehicle) { v.TokenID = "changed" })
			}); err != nil {
				t.Error(err)
			}
		}
	}
	a.r.duringDecision.Store(&hook)
	id := c.request()
	c.waitTerminal(protocol.ReplyExecuted, id)
	if n := runs.Load(); n != 2 {
		t.Fatalf("decision ran %d times, want 2 (the first run's commit must fail on the changed vehicle)", n)
	}

	// The vehicle removed meanwhile: the run again refuses it, and the car gets nothing.
	runs.Store(0)
	removed := func(string) {
		if runs.Add(1) == 1 {
			// As a decommission by another replica would leave it for this check: no record.
			if err := other.Update(context.Background(), func(tx kv.Tx) error { return tx.Delete([]byte("vehicles"), []byte(c.vin)) }); err != nil {
				t.Error(err)
			}
		}
	}
	a.r.duringDecision.Store(&removed)
	c.mu.Lock()
	c.answer = false
	c.mu.Unlock()
	id = c.request()
	c.waitTerminal(protocol.ReplyRejected, id)
	if got := c.terminal(id)[0].Reason; got != protocol.ReasonVehicleUnknown {
		t.Fatalf("reason %s, want %s", got, protocol.ReasonVehicleUnknown)
	}
	if c.accepted(id) {
		t.Fatal("the command was accepted for a vehicle removed before its decision committed")
	}
	c.mu.Lock()
	held := slices.Clone(c.held)
	c.mu.Unlock()
	if slices.Contains(held, id) {
		t.Fatal("the car received a command decided on a vehicle removed before the decision committed")
	}
}

// An id another replica decided is answered duplicate, as one gateway answers it, before
// anything else is judged: b, whose own rate limiter has no budget left for alice, does not
// refuse a's accepted command rate_limited (a refusal that would be recorded and sent for a
// command the car executes).
func TestClusterIDDecidedElsewhereIsDuplicateFirst(t *testing.T) {
	c := newClusterRig(t)
	a, b := c.replica("a"), c.replica("b")
	c.online(a, b)
	b.r.rate = newRateLimiter(1, 1)
	b.r.rate.allow("alice", c.clk.Now()) // b's budget for alice is spent (a per-replica limiter)
	req, id := c.signedRequest()
	<-a.r.Submit("alice", "", req)
	c.waitAccepted(id)
	<-b.r.Submit("alice", "", req) // the app sends the same request again; b gets it
	c.waitTerminal(protocol.ReplyRejected, id)
	if got := c.terminal(id)[0].Reason; got != protocol.ReasonDuplicate {
		t.Fatalf("the second sending answered %s, want %s", got, protocol.ReasonDuplicate)
	}
	c.result(id)
	testutil.EventuallyTrue(t, 30*time.Second, func() bool { return len(c.terminal(id)) == 2 })
	if got := c.terminal(id)[1].Status; got != protocol.ReplyExecuted {
		t.Fatalf("a's command answered %s, want %s", got, protocol.ReplyExecuted)
	}
	if recs := c.pendingRecords(); len(recs) != 0 {
		t.Fatalf("records left in the pending bucket: %v", recs)
	}
}
