package keys

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/gateway/store/storetest"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// Fuzz targets for what a car publishes to the key registry: whitelist acknowledgements on
// v/{vin}/keys/ack and journal entries on v/{vin}/events.

const fuzzCarVIN = "1HGCM82633A004352"

type fuzzBus struct{}

func (fuzzBus) Publish(context.Context, string, byte, bool, []byte) error    { return nil }
func (fuzzBus) Subscribe(context.Context, string, byte, mqttc.Handler) error { return nil }
func (fuzzBus) Connected() bool                                              { return true }
func (fuzzBus) Close() error                                                 { return nil }

type fuzzRing struct{ s *sign.Signer }

func (r fuzzRing) Current() *sign.Signer  { return r.s }
func (r fuzzRing) Previous() *sign.Signer { return nil }

type fuzzNoFactor struct{}

func (fuzzNoFactor) RequireForKeyChange(user, session, action, code string) error { return nil }

// fuzzRegistry is a key registry on a real store with one car whose owner paired three keys
// (whitelist versions 1 to 3, none acknowledged), and the audit log.
func fuzzRegistry(f *testing.F) (*Service, *audit.Log) {
	st, lg := storetest.OpenNoSync(f)
	gk, _ := sign.Generate()
	svc, err := New(st, lg, fuzzRing{gk}, fuzzBus{}, fuzzNoFactor{}, clocktest.New(time.UnixMilli(1_800_000_000_000)), slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	if err := st.AddVehicles([]store.Vehicle{{VIN: fuzzCarVIN}}); err != nil {
		f.Fatal(err)
	}
	if err := st.AddUser(store.User{Name: "alice", PasswordHash: "x"}); err != nil {
		f.Fatal(err)
	}
	if err := st.Assign(fuzzCarVIN, "alice", protocol.RoleOwner); err != nil {
		f.Fatal(err)
	}
	for range 3 {
		k, _ := sign.Generate()
		pub, _ := sign.EncodePublic(k.Public())
		if _, err := svc.Pair(context.Background(), "alice", "s1", fuzzCarVIN, pub, "phone", ""); err != nil {
			f.Fatal(err)
		}
	}
	return svc, lg
}

// FuzzWhitelistAck feeds arbitrary acknowledgements to the registry: no panic, and the
// acknowledged version only rises, never past the version the gateway issued, and only to a
// version an acknowledgement naming this car stated.
func FuzzWhitelistAck(f *testing.F) {
	for _, a := range []protocol.KeysAck{
		{V: 1, VIN: fuzzCarVIN, Version: 1, TsMs: 1}, {V: 1, VIN: fuzzCarVIN, Version: 3},
		{V: 1, VIN: fuzzCarVIN, Version: 4}, {V: 1, VIN: "2HGCM82633A004352", Version: 2},
	} {
		b, _ := json.Marshal(a)
		f.Add(b)
	}
	f.Add([]byte(`{"vin":"` + fuzzCarVIN + `","version":18446744073709551615}`))
	svc, _ := fuzzRegistry(f)
	topic := protocol.VehicleTopic(fuzzCarVIN, protocol.SuffixKeysAck)
	f.Fuzz(func(t *testing.T, payload []byte) {
		before := svc.Status(fuzzCarVIN)
		svc.OnAck(mqttc.Message{Topic: topic, Payload: payload})
		after := svc.Status(fuzzCarVIN)
		if after.Version != before.Version || after.AckedVersion < before.AckedVersion || after.AckedVersion > after.Version {
			t.Fatalf("after %q: %+v (before %+v)", payload, after, before)
		}
		if after.AckedVersion != before.AckedVersion {
			var ack protocol.KeysAck
			if err := json.Unmarshal(payload, &ack); err != nil || ack.VIN != fuzzCarVIN || ack.Version != after.AckedVersion {
				t.Fatalf("acknowledged version %d from %q", after.AckedVersion, payload)
			}
		}
	})
}

// FuzzJournalEvent feeds arbitrary journal entries to the registry: no panic, at most one
// audit record per message, none for a message that does not name this car with a sequence
// number, and none for the same message again.
func FuzzJournalEvent(f *testing.F) {
	for _, ev := range []protocol.VehicleEvent{
		{V: 1, VIN: fuzzCarVIN, Seq: 1, Kind: protocol.EventLocalCommand, CmdID: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", KeyID: "k1",
			User: "alice", Action: "unlock", Status: "executed", TsMs: 1_800_000_000_000},
		{V: 1, VIN: fuzzCarVIN, Seq: 2, Kind: protocol.EventLocalCommand, Status: "rejected", Reason: protocol.ReasonKeyRevoked},
		{V: 1, VIN: fuzzCarVIN, Seq: 0},
		{V: 1, VIN: "2HGCM82633A004352", Seq: 3},
	} {
		b, _ := json.Marshal(ev)
		f.Add(b)
	}
	svc, lg := fuzzRegistry(f)
	topic := protocol.VehicleTopic(fuzzCarVIN, protocol.SuffixEvents)
	count := func(t *testing.T) int {
		n, err := lg.Count()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		n0 := count(t)
		svc.OnEvent(mqttc.Message{Topic: topic, Payload: payload})
		n1 := count(t)
		svc.OnEvent(mqttc.Message{Topic: topic, Payload: payload})
		n2 := count(t)
		switch {
		case n1 == n0+1:
			var ev protocol.VehicleEvent
			if err := json.Unmarshal(payload, &ev); err != nil || ev.VIN != fuzzCarVIN || ev.Seq == 0 {
				t.Fatalf("filed %q", payload)
			}
		case n1 != n0:
			t.Fatalf("%d audit records for one message", n1-n0)
		}
		if n2 != n1 {
			t.Fatalf("the same entry filed again: %q", payload)
		}
	})
}
