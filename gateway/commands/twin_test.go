package commands

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

// newTwinRouter is a router on a real store for the twin's tests and benchmarks; the telemetry
// path uses neither the bus nor the keys.
func newTwinRouter(t testing.TB) *Router {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "gateway.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	log, err := audit.Open(st.KV())
	if err != nil {
		t.Fatal(err)
	}
	// A clock nobody moves: the router's own flush never runs, so what the tests see dirty is
	// what they made dirty (on the real clock a run slower than TwinFlushInterval, as under
	// -race on a loaded machine, flushed part of it first: TestTwinConcurrentUpdates then saw
	// 96 dirty twins of 200).
	r, err := New(DefaultConfig(), st, log, nil, nil, nil, clocktest.New(time.UnixMilli(1_800_000_000_000)), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func telemetryMsg(t testing.TB, vin string, ts int64, seq uint64, signals map[string]any) mqttc.Message {
	t.Helper()
	b, err := json.Marshal(protocol.Telemetry{V: protocol.Version, TsMs: ts, Seq: seq, Signals: signals})
	if err != nil {
		t.Fatal(err)
	}
	return mqttc.Message{Topic: protocol.VehicleTopic(vin, protocol.SuffixTelemetry), Payload: b}
}

// The twin keeps the newest value of every signal a car reported, ignores a message older than
// what it has, and hands out copies that later telemetry does not change.
func TestTwinMergesSignals(t *testing.T) {
	r := newTwinRouter(t)
	const vin = "WVWZZZ1JZXW000001"
	r.onTelemetry(telemetryMsg(t, vin, 1000, 1, map[string]any{protocol.VSSSpeed: 10.0, protocol.VSSSoC: 80.0}))
	before, ok := r.Twin(vin)
	if !ok {
		t.Fatal("no twin after telemetry")
	}
	r.onTelemetry(telemetryMsg(t, vin, 2000, 2, map[string]any{protocol.VSSSpeed: 20.0, protocol.VSSIsLocked: true}))
	r.onTelemetry(telemetryMsg(t, vin, 1500, 3, map[string]any{protocol.VSSSpeed: 15.0})) // older: ignored
	tw, _ := r.Twin(vin)
	want := map[string]any{protocol.VSSSpeed: 20.0, protocol.VSSSoC: 80.0, protocol.VSSIsLocked: true}
	if fmt.Sprint(tw.Signals) != fmt.Sprint(want) || tw.TelemetryMs != 2000 || tw.TelemetrySeq != 2 {
		t.Fatalf("twin %+v, want signals %v at ts 2000 seq 2", tw, want)
	}
	if before.Signals[protocol.VSSSpeed] != 10.0 || len(before.Signals) != 2 {
		t.Fatalf("an earlier snapshot changed under its holder: %v", before.Signals)
	}
	if st := r.TelemetryStats(); st.Received != 3 || st.Cars != 1 || st.Lost != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// A car that restarts continues at its next block of sequence numbers: the numbers it skipped
// are not lost messages, a gap after that is.
func TestTelemetryLossAcrossACarRestart(t *testing.T) {
	r := newTwinRouter(t)
	const vin = "WVWZZZ1JZXW000001"
	var seqs []uint64
	for seq := uint64(1); seq <= 10; seq++ { // runs, then restarts at the next block
		seqs = append(seqs, seq)
	}
	seqs = append(seqs, 257, 258, 260) // 259 lost
	seqs = append(seqs, 513, 514)      // restarted again
	for i, seq := range seqs {
		r.onTelemetry(telemetryMsg(t, vin, int64(i+1), seq, map[string]any{protocol.VSSSpeed: 1.0}))
	}
	if st := r.TelemetryStats(); st.Received != uint64(len(seqs)) || st.Lost != 1 {
		t.Fatalf("stats %+v, want %d received and 1 lost", st, len(seqs))
	}
}

// Many workers update many cars while the twins are read and flushed: no race (go test -race),
// every message counted, every gap in a car's sequence counted as lost, and the flushed copies
// hold each car's newest values.
func TestTwinConcurrentUpdates(t *testing.T) {
	r := newTwinRouter(t)
	const cars, perCar, workers = 200, 50, 8
	vins := make([]string, cars)
	for i := range vins {
		vins[i] = fmt.Sprintf("WVWZZZ1JZXW%06d", i)
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < cars; i += workers {
				for seq := uint64(1); seq <= perCar; seq++ {
					if i%10 == 0 && seq == 7 {
						continue // a lost message on every tenth car
					}
					r.onTelemetry(telemetryMsg(t, vins[i], int64(seq), seq, map[string]any{protocol.VSSSpeed: float64(seq)}))
				}
			}
		})
	}
	wg.Go(func() {
		for range 100 {
			_, _ = r.Twin(vins[0])
			_ = r.TelemetryStats()
			r.twins.markDirty(r.twins.takeDirty())
		}
	})
	wg.Wait()
	st := r.TelemetryStats()
	if wantLost := uint64(cars / 10); st.Received != cars*perCar-wantLost || st.Lost != wantLost || st.Cars != cars {
		t.Fatalf("stats %+v, want %d received, %d lost, %d cars", st, cars*perCar-cars/10, wantLost, cars)
	}
	flushed := r.twins.takeDirty()
	if len(flushed) != cars {
		t.Fatalf("%d dirty twins, want %d", len(flushed), cars)
	}
	for _, tw := range flushed {
		if tw.Signals[protocol.VSSSpeed] != float64(perCar) {
			t.Fatalf("%s: speed %v, want the newest (%d)", tw.VIN, tw.Signals[protocol.VSSSpeed], perCar)
		}
	}
}
