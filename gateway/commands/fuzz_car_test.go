package commands

import (
	"encoding/json"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"telematics/gateway/store/storetest"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

// Fuzz targets for what a car publishes to the command router: results on v/{vin}/result,
// status on v/{vin}/status and telemetry on v/{vin}/telemetry. FuzzAppRequest (fuzz_test.go)
// covers what apps publish.

const (
	fuzzCarVIN   = "1HGCM82633A004352"
	fuzzOtherVIN = "2HGCM82633A004352"
	fuzzCmdID    = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
)

// take returns the replies so far and forgets them.
func (b *replies) take() []protocol.Reply {
	b.mu.Lock()
	defer b.mu.Unlock()
	got := b.got
	b.got = nil
	return got
}

func fuzzRouter(f *testing.F, bus mqttc.Client) *Router {
	st, lg := storetest.OpenNoSync(f)
	r, err := New(DefaultConfig(), st, lg, bus, nil, nil, clocktest.New(time.UnixMilli(1_800_000_000_000)), slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { r.Close() })
	return r
}

// FuzzCarResult feeds arbitrary results to the router while one command to the car is
// pending: no panic; the app gets exactly one terminal reply, with a reason from the closed
// list, for a well-formed result of that command from that car, "executed" only when the car
// said so; nothing for anything else, and nothing for the same result again.
func FuzzCarResult(f *testing.F) {
	for _, res := range []protocol.Result{
		{V: 1, ID: fuzzCmdID, Status: protocol.ResultExecuted, State: map[string]any{"locked": false}, TsMs: 1_800_000_000_100},
		{V: 1, ID: fuzzCmdID, Status: protocol.ResultRejected, Reason: protocol.ReasonKeyRevoked, TsMs: 1},
		{V: 1, ID: fuzzCmdID, Status: protocol.ResultRejected, Reason: "made_up"},
		{V: 1, ID: fuzzCmdID, Status: "exploded"},
		{V: 1, ID: "other-id", Status: protocol.ResultExecuted},
	} {
		b, _ := json.Marshal(res)
		f.Add(false, b)
		f.Add(true, b)
	}
	bus := &replies{}
	r := fuzzRouter(f, bus)
	f.Fuzz(func(t *testing.T, otherCar bool, payload []byte) {
		r.mu.Lock()
		r.pending[fuzzCmdID] = &pending{user: "alice", session: "alice-1", vin: fuzzCarVIN, action: "unlock", expiresAtMs: 1_800_000_010_000}
		r.mu.Unlock()
		defer func() {
			r.mu.Lock()
			delete(r.pending, fuzzCmdID)
			r.mu.Unlock()
		}()
		from := fuzzCarVIN
		if otherCar {
			from = fuzzOtherVIN
		}
		m := mqttc.Message{Topic: protocol.VehicleTopic(from, protocol.SuffixResult), Payload: payload}
		r.onResult(m)
		r.onResult(m)
		got := bus.take()
		var res protocol.Result
		answers := !otherCar && protocol.Decode(payload, &res) == nil && res.ID == fuzzCmdID
		if !answers {
			if len(got) != 0 {
				t.Fatalf("replies %+v to %q from %s", got, payload, from)
			}
			return
		}
		if len(got) != 1 {
			t.Fatalf("%d replies to %q, want 1: %+v", len(got), payload, got)
		}
		rep := got[0]
		if !protocol.Terminal(rep.Status) || rep.ID != fuzzCmdID || rep.Reason != "" && !rep.Reason.Valid() {
			t.Fatalf("reply %+v", rep)
		}
		if (rep.Status == protocol.ReplyExecuted) != (res.Status == protocol.ResultExecuted) {
			t.Fatalf("reply %q to a result %q", rep.Status, res.Status)
		}
	})
}

// FuzzCarTwin feeds arbitrary status and telemetry messages to the digital twin: no panic; the
// status is only ever online or offline; telemetry time never goes back, and an accepted
// message's signals are all in the twin.
func FuzzCarTwin(f *testing.F) {
	for _, st := range []protocol.VehicleStatus{{V: 1, Status: protocol.StatusOnline, TsMs: 5}, {V: 1, Status: protocol.StatusOffline, TsMs: 4}, {V: 1, Status: "burning"}} {
		b, _ := json.Marshal(st)
		f.Add(true, b)
	}
	for _, tel := range []protocol.Telemetry{
		{V: 1, TsMs: 1_800_000_000_000, Seq: 1, Signals: map[string]any{protocol.VSSSpeed: 42.5, protocol.VSSIsLocked: true}},
		{V: 1, TsMs: 1, Seq: 257, Signals: map[string]any{protocol.VSSSoC: 80}},
	} {
		b, _ := json.Marshal(tel)
		f.Add(false, b)
	}
	r := fuzzRouter(f, nil)
	f.Fuzz(func(t *testing.T, status bool, payload []byte) {
		before, _ := r.Twin(fuzzCarVIN)
		if status {
			r.onStatus(mqttc.Message{Topic: protocol.VehicleTopic(fuzzCarVIN, protocol.SuffixStatus), Payload: payload})
		} else {
			r.onTelemetry(mqttc.Message{Topic: protocol.VehicleTopic(fuzzCarVIN, protocol.SuffixTelemetry), Payload: payload})
		}
		after, _ := r.Twin(fuzzCarVIN)
		switch after.Status {
		case "", protocol.StatusOnline, protocol.StatusOffline:
		default:
			t.Fatalf("twin status %q", after.Status)
		}
		if after.TelemetryMs < before.TelemetryMs {
			t.Fatalf("telemetry time went back: %d → %d", before.TelemetryMs, after.TelemetryMs)
		}
		var tel protocol.Telemetry
		if status || protocol.DecodeTelemetry(payload, &tel) != nil || tel.TsMs < before.TelemetryMs {
			if !status && !reflect.DeepEqual(before, after) {
				t.Fatalf("refused telemetry %q changed the twin", payload)
			}
			return
		}
		if after.TelemetryMs != tel.TsMs || after.TelemetrySeq != tel.Seq {
			t.Fatalf("twin %+v after %+v", after, tel)
		}
		for k, v := range tel.Signals {
			if !reflect.DeepEqual(after.Signals[k], v) {
				t.Fatalf("signal %q: %v, want %v", k, after.Signals[k], v)
			}
		}
	})
}
