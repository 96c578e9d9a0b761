package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/fleet"
)

// open_trunk refused while the car moves said only "forbidden" to the user: the car's reason
// reaches the app's reply (message) and the audit record.
func TestCarsRefusalMessageReachesTheReply(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), nil)
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)

	// The car is on a trip: driving at 60 km/h for the next hour.
	st, err := carstore.Open(filepath.Join(t.TempDir(), "sim.db"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixMilli()
	state, err := json.Marshal(vehicle.State{Locked: true, Running: true, Driving: true,
		SpeedKmh: 60, TargetSpeedKmh: 60, SoCPercent: 80, PhaseUntilMs: now + time.Hour.Milliseconds(),
		Lat: 48.1, Lon: 11.5, HomeLat: 48.1, HomeLon: 11.5})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SaveCar(vin, carstore.CarRecord{State: state}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		fleet.Run(ctx, fleet.Config{BrokerURL: g.BrokerURL(), Creds: creds, Store: st, TelemetryInterval: 200 * time.Millisecond})
	}()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	waitOnline(t, g, vin)
	app := login(t, g, "alice", "", vin)
	waitSynced(t, g, vin)

	r := send(t, app, vin, protocol.ActionOpenTrunk)
	expect(t, r, protocol.ReplyRejected, protocol.ReasonForbidden)
	if !strings.Contains(r.Message, "cannot open while the car moves") {
		t.Fatalf("reply message %q", r.Message)
	}
	// The result's record joins the gateway's next commit, after the reply went out.
	testutil.Eventually(t, 5*time.Second, func() error {
		evs, _ := g.Audit().Query(audit.Filter{VIN: vin, Kind: audit.KindResult})
		if len(evs) == 0 || !strings.Contains(evs[0].Detail, "cannot open while the car moves") {
			return fmt.Errorf("audit: %+v", evs)
		}
		return nil
	})
	// What the state allows still goes through.
	expect(t, send(t, app, vin, protocol.ActionUnlock), protocol.ReplyExecuted, "")
}
