package commands

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/store"
	"telematics/internal/etcdtest"
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
