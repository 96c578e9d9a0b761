package fleet

import (
	"fmt"
	"testing"
	"time"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/link/linktest"
	"telematics/pkg/vehicle/vehicletest"
)

// A car that gets no acknowledgement for the journal entries it published sends them again
// by itself once JournalResendInterval has passed on its clock, and not before: the broker
// that took them may have lost them. The fleet runs on a fake clock; the test moves it.
func TestJournalResentAfterResendInterval(t *testing.T) {
	const interval, resend = 10 * time.Second, time.Minute
	gw := vehicletest.NewGatewayAt(t, time.Now())
	dir := t.TempDir()
	r := linktest.NewRig(t, gw, vehicletest.NewClock(time.Now()), dir, false)
	for _, a := range []protocol.Action{protocol.ActionUnlock, protocol.ActionLock} {
		if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, a)})); res.Status != protocol.ResultExecuted {
			t.Fatal(res)
		}
	}
	r.Stop()

	srv, url := startBroker(t)
	rec := &recorder{}
	for _, f := range []string{"v/+/events", "v/+/telemetry"} {
		if err := srv.Subscribe(f, 1, rec.record); err != nil {
			t.Fatal(err)
		}
	}
	clk := vehicletest.NewClock(time.Now())
	start := clk.Now()
	runTestFleet(t, Config{BrokerURL: url, Creds: []protocol.Credentials{gw.Creds(t, vehicletest.VIN)}, Store: vehicletest.OpenStore(t, dir),
		TelemetryInterval: interval, JournalResendInterval: resend, Clock: clk})

	const once = "1:unlock/executed/ 2:lock/executed/"
	sent := func() string { return summary(events(t, rec, vehicletest.VIN)) }
	telemetry := func() int { return len(rec.get(protocol.VehicleTopic(vehicletest.VIN, protocol.SuffixTelemetry))) }
	// Connected, the car publishes its journal at once and arms its telemetry timer.
	testutil.Eventually(t, 10*time.Second, func() error {
		if got := sent(); got != once || clk.Waiters() != 1 {
			return fmt.Errorf("events %q, %d timers; want %q and the telemetry timer", got, clk.Waiters(), once)
		}
		return nil
	})
	// tick moves the clock past the next telemetry tick (its interval varies by ±10 %) and
	// waits until the car has handled it: a telemetry message went out and the timer is armed
	// again. What a tick decides is published before the car handles the next one.
	tick := func() {
		t.Helper()
		n := telemetry()
		clk.Advance(interval + interval/10)
		testutil.Eventually(t, 10*time.Second, func() error {
			if telemetry() <= n || clk.Waiters() != 1 {
				return fmt.Errorf("tick not handled: %d telemetry messages, %d timers", telemetry(), clk.Waiters())
			}
			return nil
		})
	}
	// Every tick until 55 s after the publish: nothing is sent again.
	for clk.Since(start) < resend-interval/2 {
		tick()
	}
	if got := sent(); got != once {
		t.Fatalf("events %q %s after the publish, want %q: resent before the interval", got, clk.Since(start), once)
	}
	// The first tick past the interval sends both entries again, in order.
	for clk.Since(start) < resend+2*interval && sent() == once {
		tick()
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if got, want := sent(), once+" "+once; got != want {
			return fmt.Errorf("events %q at %s, want %q", got, clk.Since(start), want)
		}
		return nil
	})
}
