package audit

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/internal/etcdtest"
)

// BenchmarkEtcdAppendContended measures what the audit log's one sequence key costs a cluster:
// appends from several writers on each of 1 or 2 store clients (gateway replicas) of one
// embedded etcd. Every append reads and increments the sequence, so concurrent appends
// conflict and run again (etcdkv's jittered retry); retries/append counts those extra runs.
// "own-keys" is the same load writing one key per append and no sequence: the cost of the
// commit alone, without the hot key. Figures in docs/PERFORMANCE.md:
//
//	go test -run XXX -bench EtcdAppendContended -benchtime 2000x ./gateway/audit/
func BenchmarkEtcdAppendContended(b *testing.B) {
	etcd := etcdtest.Start(b)
	ev := Event{TsMs: 1_800_000_000_000, Kind: KindCommand, User: "alice", VIN: "1HGCM82633A004352",
		CmdID: "01a23720-bf98-7ee2-b6cb-e62b61a1907b", Action: "unlock", Outcome: "accepted", Detail: "factors=token,key"}
	for _, scheme := range []string{"sequence", "own-keys"} {
		for _, clients := range []int{1, 2} {
			for _, writers := range []int{1, 8} {
				name := fmt.Sprintf("%s/clients=%d/writers=%d", scheme, clients, writers)
				b.Run(name, func(b *testing.B) {
					prefix := "/audit-bench/" + name + "/"
					stores := make([]kv.Store, clients)
					for i := range stores {
						s, err := etcdkv.Open(etcdkv.Options{Endpoints: etcd.Endpoints(), Prefix: prefix, Timeout: 60 * time.Second, MaxAttempts: 1000})
						if err != nil {
							b.Fatal(err)
						}
						defer s.Close()
						stores[i] = s
					}
					lg, err := Open(stores[0])
					if err != nil {
						b.Fatal(err)
					}
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
									return lg.AppendTx(tx, ev)
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
					b.StopTimer()
					if err, _ := failed.Load().(error); err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(float64(runs.Load()-int64(b.N))/float64(b.N), "retries/append")
					b.ReportMetric(float64(b.N)/elapsed.Seconds(), "appends/s")
				})
			}
		}
	}
}
