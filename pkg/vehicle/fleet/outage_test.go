package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"telematics/internal/testutil"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/link"
	"telematics/pkg/vehicle/link/linktest"
	"telematics/pkg/vehicle/vehicletest"
)

// fastDial is mqttc.Dial with a quick reconnect, so a test need not wait for the default
// backoff after a broker restart.
func fastDial(ctx context.Context, o mqttc.Options) (mqttc.Client, error) {
	o.MinReconnectInterval, o.MaxReconnectInterval = 20*time.Millisecond, 100*time.Millisecond
	return dialPaho(ctx, o)
}

// runTestFleet runs Run until the test ends (or stop is called) and returns stop.
func runTestFleet(t *testing.T, cfg Config) (stop func() Stats) {
	t.Helper()
	logBuf := &testutil.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(logBuf.String())
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Stats, 1)
	go func() {
		st, err := Run(ctx, cfg)
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		done <- st
	}()
	var stats *Stats
	stop = func() Stats {
		if stats == nil {
			cancel()
			select {
			case st := <-done:
				stats = &st
			case <-time.After(20 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
		}
		return *stats
	}
	t.Cleanup(func() { stop() })
	return stop
}

// events decodes what the broker saw on vin's events topic.
func events(t *testing.T, rec *recorder, vin string) []protocol.VehicleEvent {
	t.Helper()
	var out []protocol.VehicleEvent
	for _, pk := range rec.get(protocol.VehicleTopic(vin, protocol.SuffixEvents)) {
		var ev protocol.VehicleEvent
		if err := json.Unmarshal(pk.Payload, &ev); err != nil {
			t.Fatalf("event %q: %v", pk.Payload, err)
		}
		if strings.Contains(string(pk.Payload), `"nonce"`) || strings.Contains(string(pk.Payload), `"sig"`) {
			t.Fatalf("event carries a nonce or signature: %s", pk.Payload)
		}
		out = append(out, ev)
	}
	return out
}

func summary(evs []protocol.VehicleEvent) string {
	var parts []string
	for _, ev := range evs {
		parts = append(parts, fmt.Sprintf("%d:%s/%s/%s", ev.Seq, ev.Action, ev.Status, ev.Reason))
	}
	return strings.Join(parts, " ")
}

// TestLocalLinkAndJournalThroughBrokerOutage is the car's side of an outage: the cloud is
// down (here: the broker), the owner still opens her car over the local link, the car
// journals what it did and delivers the journal once the broker is back. (pkg/drill's
// TestOutageDrill runs the whole system through an outage with many cars.)
func TestLocalLinkAndJournalThroughBrokerOutage(t *testing.T) {
	srv, url, stopBroker := startBrokerAt(t, "127.0.0.1:0", nil)
	addr := strings.TrimPrefix(url, "tcp://")
	rec := &recorder{}
	for _, f := range []string{"v/+/events", "v/+/keys/ack"} {
		if err := srv.Subscribe(f, 1, rec.record); err != nil {
			t.Fatal(err)
		}
	}
	ackJournal(t, srv)
	gw := vehicletest.NewGatewayAt(t, time.Now())
	if err := srv.Publish(protocol.VehicleTopic(vehicletest.VIN, protocol.SuffixKeys), gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 1}), true, 1); err != nil {
		t.Fatal(err)
	}

	st := vehicletest.OpenStore(t, t.TempDir())
	garage := vehicle.NewGarage()
	linkSrv := link.NewServer(garage, nil)
	if err := linkSrv.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer linkSrv.Close()
	stop := runTestFleet(t, Config{BrokerURL: url, Creds: []protocol.Credentials{gw.Creds(t, vehicletest.VIN)}, Store: st,
		TelemetryInterval: time.Second, Garage: garage, Dial: fastDial})
	testutil.Eventually(t, 10*time.Second, func() error {
		if len(rec.get(protocol.VehicleTopic(vehicletest.VIN, protocol.SuffixKeysAck))) == 0 {
			return fmt.Errorf("no whitelist ack")
		}
		return nil
	})
	car, ok := garage.Car(vehicletest.VIN)
	if !ok {
		t.Fatal("Run did not put the car in the garage")
	}

	r := vehicletest.NewLinkPhone(linkSrv.URL(), vehicletest.NewClock(time.Now()))
	local := func(phone *vehicletest.Phone, a protocol.Action) protocol.Result {
		r.Clock = vehicletest.NewClock(time.Now())
		return r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, a), Phone: phone}))
	}

	// Online: the journal entry goes out at once and leaves the store once acknowledged.
	if res := local(nil, protocol.ActionUnlock); res.Status != protocol.ResultExecuted {
		t.Fatalf("local unlock while online: %+v", res)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if got := summary(events(t, rec, vehicletest.VIN)); got != "1:unlock/executed/" {
			return fmt.Errorf("events %q", got)
		}
		if n := len(vehicletest.Journal(t, st, vehicletest.VIN)); n != 0 {
			return fmt.Errorf("%d entries left in the journal", n)
		}
		return nil
	})

	// The broker goes down. The link does not need it.
	stopBroker()
	if res := local(nil, protocol.ActionLock); res.Status != protocol.ResultExecuted {
		t.Fatalf("local lock while the broker is down: %+v", res)
	}
	if res := local(gw.Cast.Stranger, protocol.ActionUnlock); res.Reason != protocol.ReasonKeyUnknown {
		t.Fatalf("a stranger's unlock while the broker is down: %+v", res)
	}
	if !car.State().Locked {
		t.Fatal("the car is not locked")
	}
	if evs := vehicletest.Journal(t, st, vehicletest.VIN); summary(evs) != "2:lock/executed/ 3:unlock/rejected/key_unknown" {
		t.Fatalf("journal while offline: %s", summary(evs))
	}

	// The broker comes back on the same address (with no retained whitelist: it holds
	// nothing); the car reconnects and delivers its journal, in order.
	rec2 := &recorder{}
	startBrokerAt(t, addr, func(srv2 *mqtt.Server) {
		if err := srv2.Subscribe("v/+/events", 1, rec2.record); err != nil {
			t.Fatal(err)
		}
		ackJournal(t, srv2)
	})
	testutil.Eventually(t, 15*time.Second, func() error {
		if got := summary(events(t, rec2, vehicletest.VIN)); got != "2:lock/executed/ 3:unlock/rejected/key_unknown" {
			return fmt.Errorf("events after reconnect %q", got)
		}
		if n := len(vehicletest.Journal(t, st, vehicletest.VIN)); n != 0 {
			return fmt.Errorf("%d entries left in the journal", n)
		}
		return nil
	})
	evs := events(t, rec2, vehicletest.VIN)
	if evs[1].User != "" || evs[1].KeyID != gw.Cast.Stranger.Key.ID || evs[0].User != "alice" || evs[0].VIN != vehicletest.VIN {
		t.Errorf("events %+v", evs)
	}
	if st := stop(); st.EventsSent != 3 || st.Whitelists != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestJournalSurvivesRestart: local decisions made while no fleet runs (no broker at all) are
// in the store after a restart and go out when the car is first online.
func TestJournalSurvivesRestart(t *testing.T) {
	gw := vehicletest.NewGatewayAt(t, time.Now())
	dir := t.TempDir()
	r := linktest.NewRig(t, gw, vehicletest.NewClock(time.Now()), dir, false)
	for _, a := range []protocol.Action{protocol.ActionUnlock, protocol.ActionOpenTrunk} {
		if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, a)})); res.Status != protocol.ResultExecuted {
			t.Fatal(res)
		}
	}
	if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionOpenTrunk), Phone: gw.Cast.Valet})); res.Reason != protocol.ReasonForbidden {
		t.Fatal(res)
	}
	r.Stop()

	srv, url := startBroker(t)
	rec := &recorder{}
	if err := srv.Subscribe("v/+/events", 1, rec.record); err != nil {
		t.Fatal(err)
	}
	ackJournal(t, srv)
	st := vehicletest.OpenStore(t, dir)
	if n := len(vehicletest.Journal(t, st, vehicletest.VIN)); n != 3 {
		t.Fatalf("journal after restart holds %d entries", n)
	}
	runTestFleet(t, Config{BrokerURL: url, Creds: []protocol.Credentials{gw.Creds(t, vehicletest.VIN)}, Store: st, TelemetryInterval: time.Second})
	want := "1:unlock/executed/ 2:open_trunk/executed/ 3:open_trunk/rejected/forbidden"
	testutil.Eventually(t, 10*time.Second, func() error {
		if got := summary(events(t, rec, vehicletest.VIN)); got != want {
			return fmt.Errorf("events %q, want %q", got, want)
		}
		if n := len(vehicletest.Journal(t, st, vehicletest.VIN)); n != 0 {
			return fmt.Errorf("%d entries left in the journal", n)
		}
		return nil
	})
	if evs := events(t, rec, vehicletest.VIN); evs[2].User != "victor" || evs[2].KeyID != gw.Cast.Valet.Key.ID {
		t.Errorf("refusal event %+v", evs[2])
	}
}
