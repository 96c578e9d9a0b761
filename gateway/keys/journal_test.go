package keys

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

func TestVehicleEventsFiledOnce(t *testing.T) {
	f := newFixture(t)
	ev := protocol.VehicleEvent{V: 1, VIN: vin, Seq: 1, Kind: protocol.EventLocalCommand, CmdID: "c1", User: "alice", Action: "unlock", Status: "executed", TsMs: 1}
	b, _ := json.Marshal(ev)
	m := mqttc.Message{Topic: "v/" + vin + "/events", Payload: b}
	f.svc.OnEvent(m)
	f.svc.OnEvent(m) // redelivered
	lg, _ := audit.Open(f.st.KV())
	evs, _ := lg.Query(audit.Filter{Kind: audit.KindVehicle})
	if len(evs) != 1 || evs[0].CmdID != "c1" || evs[0].Outcome != "executed" {
		t.Fatalf("vehicle events in audit: %+v", evs)
	}
	// An event published on another car's topic is ignored.
	f.svc.OnEvent(mqttc.Message{Topic: "v/2HGCM82633A004352/events", Payload: b})
	if evs, _ := lg.Query(audit.Filter{Kind: audit.KindVehicle}); len(evs) != 1 {
		t.Fatalf("event for another VIN filed: %d", len(evs))
	}
}

// TestJournalMarkersDoNotGrowForever: the gateway remembers each filed journal entry (to
// ignore redeliveries) for journalMarkerTTL, not for ever: a car whose link is tried day after
// day (every refusal is an entry) must not grow the gateway's database without bound. A
// redelivery within the TTL is still ignored.
func TestJournalMarkersDoNotGrowForever(t *testing.T) {
	f := newFixture(t)
	file := func(seq uint64) {
		ev := protocol.VehicleEvent{V: 1, VIN: vin, Seq: seq, Kind: protocol.EventLocalCommand, User: "mallory", Action: "unlock",
			Status: "rejected", Reason: protocol.ReasonKeyUnknown, TsMs: f.clk.Now().UnixMilli()}
		b, _ := json.Marshal(ev)
		f.svc.OnEvent(mqttc.Message{Topic: "v/" + vin + "/events", Payload: b})
	}
	markers := func() int {
		n := 0
		_ = f.st.View(context.Background(), func(tx kv.Tx) error {
			return tx.Scan(bucketJournal, nil, nil, func(_, _ []byte) error { n++; return nil })
		})
		return n
	}
	const perDay = 100
	seq := uint64(0)
	for day := 0; day < 30; day++ {
		for i := 0; i < perDay; i++ {
			seq++
			file(seq)
		}
		f.clk.Advance(24 * time.Hour)
	}
	// About a week of markers stays (plus one batch not yet worked off), not 30 days'.
	if n, most := markers(), (int(journalMarkerTTL/(24*time.Hour))+1)*perDay+journalPruneBatch; n > most {
		t.Fatalf("%d journal markers after 30 days of %d entries a day, want at most %d", n, perDay, most)
	}
	lg, _ := audit.Open(f.st.KV())
	before, _ := lg.Count()
	file(seq) // a redelivery of the newest entry is still recognised
	if after, _ := lg.Count(); after != before {
		t.Fatalf("a redelivered entry was filed again: %d audit records, then %d", before, after)
	}
}

func TestVehicleEventsOutOfOrder(t *testing.T) {
	f := newFixture(t)
	for _, seq := range []uint64{3, 1, 2, 3, 1} {
		b, _ := json.Marshal(protocol.VehicleEvent{V: 1, VIN: vin, Seq: seq, Kind: protocol.EventLocalCommand, Status: "executed", TsMs: 1})
		f.svc.OnEvent(mqttc.Message{Topic: "v/" + vin + "/events", Payload: b})
	}
	lg, _ := audit.Open(f.st.KV())
	if evs, _ := lg.Query(audit.Filter{Kind: audit.KindVehicle}); len(evs) != 3 {
		t.Fatalf("%d events filed from seqs 3,1,2 (+2 redelivered), want 3", len(evs))
	}
}
