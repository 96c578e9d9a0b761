package audit

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/internal/etcdtest"
)

// BenchmarkEtcdAppendContended measures what the audit log's one sequence key costs a cluster:
// appends from several writers on each of 1 or 2 store clients (gateway replicas) of one
// embedded etcd. "sequence" numbers each append at once (the bbolt way: every append reads
// and increments the sequence, so concurrent appends conflict and run again, etcdkv's
// jittered retry); retries/append counts those extra runs. "inbox" is what a log on etcd does:
// appends go to the inbox and each client's mover (RunMover) numbers them in the background;
// appends/s counts until the last append committed, ms-to-number-the-rest is the Count that
// then numbers what the movers had not yet. "own-keys" is the same load writing one key
// per append and no sequence: the cost of the commit alone, without the hot key. Figures in
// docs/PERFORMANCE.md:
//
//	go test -run XXX -bench EtcdAppendContended -benchtime 2000x ./gateway/audit/
func BenchmarkEtcdAppendContended(b *testing.B) {
	etcd := etcdtest.Start(b)
	ev := Event{TsMs: 1_800_000_000_000, Kind: KindCommand, User: "alice", VIN: "1HGCM82633A004352",
		CmdID: "01a23720-bf98-7ee2-b6cb-e62b61a1907b", Action: "unlock", Outcome: "accepted", Detail: "factors=token,key"}
	for _, scheme := range []string{"sequence", "inbox", "own-keys"} {
		for _, clients := range []int{1, 2} {
			for _, writers := range []int{1, 8} {
				name := fmt.Sprintf("%s/clients=%d/writers=%d", scheme, clients, writers)
				b.Run(name, func(b *testing.B) {
					prefix := fmt.Sprintf("/audit-bench/%s/%d/", name, b.N) // a fresh log per run
					stores := make([]kv.Store, clients)
					for i := range stores {
						s, err := etcdkv.Open(etcdkv.Options{Endpoints: etcd.Endpoints(), Prefix: prefix, Timeout: 60 * time.Second, MaxAttempts: 1000})
						if err != nil {
							b.Fatal(err)
						}
						defer s.Close()
						stores[i] = s
					}
					logs := make([]*Log, clients)
					for i := range logs {
						lg, err := Open(stores[i])
						if err != nil {
							b.Fatal(err)
						}
						lg.inbox = scheme == "inbox"
						logs[i] = lg
					}
					ctx, cancel := context.WithCancel(context.Background())
					var movers sync.WaitGroup
					for _, lg := range logs {
						movers.Go(func() { lg.RunMover(ctx, slog.New(slog.DiscardHandler)) })
					}
					defer func() { cancel(); movers.Wait() }()
					var runs, next atomic.Int64
					var failed atomic.Value
					b.ReportAllocs()
					b.ResetTimer()
					start := time.Now()
					done := make(chan struct{})
					total := clients * writers
					for w := range total {
						go func() {
							defer func() { done <- struct{}{} }()
							st := stores[w%clients]
							for {
								n := next.Add(1)
								if n > int64(b.N) {
									return
								}
								err := st.Update(context.Background(), func(tx kv.Tx) error {
									runs.Add(1)
									if scheme == "own-keys" {
										v, err := encode(ev)
										if err != nil {
											return err
										}
										return tx.Put([]byte("ownkeys"), fmt.Appendf(nil, "%016x", n), v)
									}
									return logs[w%clients].AppendTx(tx, ev)
								})
								if err != nil {
									failed.Store(err)
									return
								}
							}
						}()
					}
					for range total {
						<-done
					}
					elapsed := time.Since(start)
					if n, err := logs[0].Count(); scheme != "own-keys" && (err != nil || n != b.N) {
						b.Fatalf("%d records numbered, %v; want %d", n, err, b.N)
					}
					drained := time.Since(start) - elapsed
					b.StopTimer()
					if err, _ := failed.Load().(error); err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(float64(runs.Load()-int64(b.N))/float64(b.N), "retries/append")
					b.ReportMetric(float64(b.N)/elapsed.Seconds(), "appends/s")
					b.ReportMetric(float64(drained.Milliseconds()), "ms-to-number-the-rest")
				})
			}
		}
	}
}
