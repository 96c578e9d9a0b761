package vehicle

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/vehicletest"
)

// ackJournal plays the gateway's part on srv: it acknowledges every journal entry it sees on
// v/{vin}/events/ack.
func ackJournal(t *testing.T, srv *mqtt.Server) {
	t.Helper()
	// Subscription id 2: a recorder may hold id 1 on the same filter.
	err := srv.Subscribe("v/+/events", 2, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		var ev protocol.VehicleEvent
		if json.Unmarshal(pk.Payload, &ev) != nil || ev.Seq == 0 {
			return
		}
		b, _ := json.Marshal(protocol.EventsAck{V: protocol.Version, VIN: ev.VIN, Seqs: []uint64{ev.Seq}})
		// Not in the publisher's goroutine, which this handler runs in.
		go srv.Publish(protocol.VehicleTopic(ev.VIN, protocol.SuffixEventsAck), b, false, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The "also" of issue 8: a car keeps a journal entry until the gateway acknowledges it, not
// merely the broker. Here the broker takes the entries (PUBACK) and then restarts, losing them,
// before any gateway saw them; the car sends them again to the new broker, whose "gateway"
// acknowledges them, and only then are they deleted.
func TestJournalKeptUntilGatewayAck(t *testing.T) {
	gw := vehicletest.NewGatewayAt(t, time.Now())
	dir := t.TempDir()
	r := newLinkRig(t, gw, vehicletest.NewClock(time.Now()), dir, false)
	for _, a := range []protocol.Action{protocol.ActionUnlock, protocol.ActionLock} {
		if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, a)})); res.Status != protocol.ResultExecuted {
			t.Fatal(res)
		}
	}
	r.stop()
	st := vehicletest.OpenStore(t, dir)

	// A broker that acknowledges the car's publishes but has no gateway behind it.
	srv, url, stopBroker := startBrokerAt(t, "127.0.0.1:0", nil)
	addr := strings.TrimPrefix(url, "tcp://")
	first := &recorder{}
	if err := srv.Subscribe("v/+/events", 1, first.record); err != nil {
		t.Fatal(err)
	}
	runTestFleet(t, FleetConfig{BrokerURL: url, Creds: []protocol.Credentials{gw.Creds(t, vehicletest.VIN)}, Store: st,
		TelemetryInterval: time.Second, Dial: fastDial})
	testutil.Eventually(t, 10*time.Second, func() error {
		if got := summary(events(t, first, vehicletest.VIN)); got != "1:unlock/executed/ 2:lock/executed/" {
			return fmt.Errorf("events %q", got)
		}
		return nil
	})
	if got := summary(vehicletest.Journal(t, st, vehicletest.VIN)); got != "1:unlock/executed/ 2:lock/executed/" {
		t.Fatalf("journal once the broker took the entries: %q, want both kept until the gateway acknowledges them", got)
	}

	// The broker restarts, and what it held is gone; the car reconnects and sends again.
	stopBroker()
	second := &recorder{}
	startBrokerAt(t, addr, func(srv2 *mqtt.Server) {
		if err := srv2.Subscribe("v/+/events", 1, second.record); err != nil {
			t.Fatal(err)
		}
		ackJournal(t, srv2)
	})
	testutil.Eventually(t, 15*time.Second, func() error {
		if got := summary(events(t, second, vehicletest.VIN)); !strings.HasPrefix(got, "1:unlock/executed/ 2:lock/executed/") {
			return fmt.Errorf("events after the broker restart %q", got)
		}
		if n := len(vehicletest.Journal(t, st, vehicletest.VIN)); n != 0 {
			return fmt.Errorf("%d entries left in the journal after the gateway acknowledged them", n)
		}
		return nil
	})
}

// Case 13 of issue 8: a car whose journal is full (carstore.MaxJournalEntries refusals waiting for the
// gateway) goes on recording refusals, as summary entries counted per key id and reason, so
// every attempt with a revoked key is accounted for; once the gateway acknowledges entries the
// summaries take the room and go out like any entry.
func TestJournalRefusalsNeverSilent(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	r := newLinkRig(t, gw, vehicletest.NewClock(vehicletest.T0), t.TempDir(), false)
	filler := protocol.VehicleEvent{V: protocol.Version, VIN: vehicletest.VIN, Kind: protocol.EventLocalCommand,
		Status: protocol.ResultRejected, Reason: protocol.ReasonKeyUnknown, TsMs: vehicletest.T0.UnixMilli()}
	for i := 0; i < carstore.MaxJournalEntries; i++ {
		if _, err := r.st.AppendJournal(vehicletest.VIN, filler); err != nil {
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
	if n := len(vehicletest.Journal(t, r.st, vehicletest.VIN)); n != carstore.MaxJournalEntries+1 {
		t.Fatalf("journal holds %d entries, want %d", n, carstore.MaxJournalEntries+1)
	}

	// The gateway acknowledges a few entries: the summaries move into the journal.
	if err := r.car.JournalAcked([]uint64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	counted := map[string]int{}
	var revoked protocol.VehicleEvent
	for _, ev := range vehicletest.Journal(t, r.st, vehicletest.VIN) {
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
	if left, err := r.st.JournalSummaries(vehicletest.VIN); err != nil || len(left) != 0 {
		t.Errorf("summaries not moved: %v %v", left, err)
	}
}
