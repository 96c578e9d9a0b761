package vehicle

import (
	"strings"
	"testing"

	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/vehicletest"
)

// open_trunk refused while the car moves said only "forbidden": the result carries the car's
// reason for the user; a refusal for who asks (a valet and the trunk) carries none.
func TestStateRefusalSaysWhy(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	st := vehicletest.OpenStore(t, t.TempDir())
	clock := vehicletest.NewClock(vehicletest.T0)
	car := newKeyedCar(t, st, gw, clock)
	res := car.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionOpenTrunk, clock.Now()), Phone: gw.Cast.Valet}))
	if res.Reason != protocol.ReasonForbidden || res.Message != "" {
		t.Fatalf("valet: %s/%s %q", res.Status, res.Reason, res.Message)
	}
	eventuallyState(t, car, clock, func(s State) bool { return s.SpeedKmh > 0 })
	res = car.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionOpenTrunk, clock.Now())}))
	if res.Reason != protocol.ReasonForbidden || !strings.Contains(res.Message, "while the car moves") {
		t.Fatalf("moving: %s/%s %q", res.Status, res.Reason, res.Message)
	}
	if len(res.Message) > protocol.MaxMessageBytes {
		t.Fatalf("message of %d bytes", len(res.Message))
	}
}
