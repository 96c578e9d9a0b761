package commands

import (
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"

	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

// BenchmarkOnTelemetry is the gateway's work per telemetry message once the broker handed it
// over: topic parse, JSON decode, the twin update under the twins' lock (the sequence count
// included). "parallel" has GOMAXPROCS callers over 1,000 cars, as the inline client's workers
// call it, so it shows what the shared lock costs.
func BenchmarkOnTelemetry(b *testing.B) {
	r := newTwinRouter(b)

	const cars = 1000
	msgs := make([]mqttc.Message, cars)
	for i := range msgs {
		vin := fmt.Sprintf("WVWZZZ1JZXW%06d", i)
		payload, err := json.Marshal(protocol.Telemetry{V: protocol.Version, TsMs: 1_700_000_000_123, Seq: 1, Signals: map[string]any{
			protocol.VSSSpeed: 87.5, protocol.VSSSoC: 63.2, protocol.VSSIsLocked: true,
			protocol.VSSCharging: false, protocol.VSSClimate: false, protocol.VSSTrunkOpen: false,
			protocol.VSSRunning: true, "Vehicle.TraveledDistance": 12345.6,
			protocol.VSSLatitude: 48.137154, protocol.VSSLongitude: 11.576124,
		}})
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = mqttc.Message{Topic: protocol.VehicleTopic(vin, protocol.SuffixTelemetry), Payload: payload}
	}
	b.Run("sequential", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(msgs[0].Payload)))
		i := 0
		for b.Loop() {
			r.onTelemetry(msgs[i%cars])
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(msgs[0].Payload)))
		var next atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				r.onTelemetry(msgs[next.Add(1)%cars])
			}
		})
	})
}
