package fleet

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
	"telematics/pkg/vehicle/link/linktest"
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
	r := linktest.NewRig(t, gw, vehicletest.NewClock(time.Now()), dir, false)
	for _, a := range []protocol.Action{protocol.ActionUnlock, protocol.ActionLock} {
		if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, a)})); res.Status != protocol.ResultExecuted {
			t.Fatal(res)
		}
	}
	r.Stop()
	st := vehicletest.OpenStore(t, dir)

	// A broker that acknowledges the car's publishes but has no gateway behind it.
	srv, url, stopBroker := startBrokerAt(t, "127.0.0.1:0", nil)
	addr := strings.TrimPrefix(url, "tcp://")
	first := &recorder{}
	if err := srv.Subscribe("v/+/events", 1, first.record); err != nil {
		t.Fatal(err)
	}
	runTestFleet(t, Config{BrokerURL: url, Creds: []protocol.Credentials{gw.Creds(t, vehicletest.VIN)}, Store: st,
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
