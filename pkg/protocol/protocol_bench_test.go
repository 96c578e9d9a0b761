package protocol_test

import (
	"encoding/json"
	"testing"

	"telematics/pkg/protocol"
)

// telemetryPayloads are the two telemetry shapes a car sends: the full set of signals of a
// simulated car (what `vehicle-sim run` and the bench publish, ~400 bytes) and a minimal
// position fix.
func telemetryPayloads(b *testing.B) map[string][]byte {
	b.Helper()
	full := protocol.Telemetry{V: protocol.Version, TsMs: 1_700_000_000_123, Seq: 4242, Signals: map[string]any{
		protocol.VSSSpeed: 87.5, protocol.VSSSoC: 63.2, protocol.VSSIsLocked: true,
		protocol.VSSCharging: false, protocol.VSSClimate: true, protocol.VSSTrunkOpen: false,
		protocol.VSSRunning: true, protocol.VSSTraveledDistance: 12345.6,
		protocol.VSSLatitude: 48.137154, protocol.VSSLongitude: 11.576124,
	}}
	small := protocol.Telemetry{V: protocol.Version, TsMs: 1_700_000_000_123, Seq: 4242, Signals: map[string]any{
		protocol.VSSLatitude: 48.137154, protocol.VSSLongitude: 11.576124,
	}}
	out := map[string][]byte{}
	for name, t := range map[string]protocol.Telemetry{"car": full, "position": small} {
		raw, err := json.Marshal(t)
		if err != nil {
			b.Fatal(err)
		}
		out[name] = raw
	}
	return out
}

// BenchmarkDecodeTelemetry is the gateway's per-message cost of v/+/telemetry before the twin
// update, into a Telemetry (signals as map[string]any, as the twin keeps them): "fast" is
// protocol.DecodeTelemetry, which the gateway uses, "json" protocol.Decode (encoding/json).
func BenchmarkDecodeTelemetry(b *testing.B) {
	decoders := map[string]func([]byte, *protocol.Telemetry) error{
		"fast": protocol.DecodeTelemetry,
		"json": func(p []byte, t *protocol.Telemetry) error { return protocol.Decode(p, t) },
	}
	for _, name := range []string{"position", "car"} {
		payload := telemetryPayloads(b)[name]
		for _, dec := range []string{"fast", "json"} {
			b.Run(name+"/"+dec, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(payload)))
				for b.Loop() {
					var t protocol.Telemetry
					if err := decoders[dec](payload, &t); err != nil || t.Seq != 4242 {
						b.Fatalf("decode: %v", err)
					}
				}
			})
		}
	}
}

// BenchmarkParseVehicleTopic is the topic split every car message pays (a regexp VIN check).
func BenchmarkParseVehicleTopic(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := protocol.ParseVehicleTopic("v/WVWZZZ1JZXW000001/telemetry"); !ok {
			b.Fatal("not parsed")
		}
	}
}
