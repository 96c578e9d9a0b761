package vehicle_test

import (
	"fmt"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/link/linktest"
	"telematics/pkg/vehicle/vehicletest"
)

// Case 13 of issue 8: a car whose journal is full (carstore.MaxJournalEntries refusals waiting for the
// gateway) goes on recording refusals, as summary entries counted per key id and reason, so
// every attempt with a revoked key is accounted for; once the gateway acknowledges entries the
// summaries take the room and go out like any entry.
func TestJournalRefusalsNeverSilent(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	r := linktest.NewRig(t, gw, vehicletest.NewClock(vehicletest.T0), t.TempDir(), false)
	filler := protocol.VehicleEvent{V: protocol.Version, VIN: vehicletest.VIN, Kind: protocol.EventLocalCommand,
		Status: protocol.ResultRejected, Reason: protocol.ReasonKeyUnknown, TsMs: vehicletest.T0.UnixMilli()}
	for i := 0; i < carstore.MaxJournalEntries; i++ {
		if _, err := r.Store.AppendJournal(vehicletest.VIN, filler); err != nil {
			t.Fatal(err)
		}
	}

	const revokedTries, strangerTries = 7, 5
	for i := 0; i < revokedTries; i++ {
		res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock), Phone: gw.Cast.Revoked}))
		if res.Reason != protocol.ReasonKeyRevoked {
			t.Fatalf("revoked key: %+v", res)
		}
		r.Clock.Advance(time.Second)
	}
	for i := 0; i < strangerTries; i++ {
		if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock), Phone: vehicletest.NewPhone(t, "x", protocol.RoleOwner)})); res.Reason != protocol.ReasonKeyUnknown {
			t.Fatalf("unknown key: %+v", res)
		}
	}
	// An executed command still gets an entry of its own.
	if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionLock)})); res.Status != protocol.ResultExecuted {
		t.Fatalf("owner's lock: %+v", res)
	}
	if n := len(vehicletest.Journal(t, r.Store, vehicletest.VIN)); n != carstore.MaxJournalEntries+1 {
		t.Fatalf("journal holds %d entries, want %d", n, carstore.MaxJournalEntries+1)
	}

	// The gateway acknowledges a few entries: the summaries move into the journal.
	if err := r.Car.JournalAcked([]uint64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	counted := map[string]int{}
	var revoked protocol.VehicleEvent
	for _, ev := range vehicletest.Journal(t, r.Store, vehicletest.VIN) {
		if ev.Seq <= carstore.MaxJournalEntries+1 {
			continue
		}
		counted[string(ev.Reason)+"/"+ev.KeyID] += ev.Count
		if ev.Reason == protocol.ReasonKeyRevoked {
			revoked = ev
		}
	}
	want := map[string]int{"key_revoked/" + gw.Cast.Revoked.Key.ID: revokedTries, "key_unknown/": strangerTries}
	if fmt.Sprint(counted) != fmt.Sprint(want) {
		t.Fatalf("summaries %v, want %v", counted, want)
	}
	if revoked.User != "rob" || revoked.Action != protocol.ActionUnlock || revoked.FirstTsMs != vehicletest.T0.UnixMilli() ||
		revoked.TsMs != vehicletest.T0.Add((revokedTries-1)*time.Second).UnixMilli() {
		t.Errorf("revoked-key summary %+v", revoked)
	}
	if left, err := r.Store.JournalSummaries(vehicletest.VIN); err != nil || len(left) != 0 {
		t.Errorf("summaries not moved: %v %v", left, err)
	}
}
