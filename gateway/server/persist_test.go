package server_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/internal/testutil"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// Behind an external broker the gateway keeps a persistent session, so what cars publish while
// the gateway is away is queued by the broker and filed when it is back: here a local-link
// unlock while the gateway is stopped (the car journals it and publishes the journal, which the
// broker acknowledges; the car keeps its copy until the gateway acknowledges it). Before, the broker dropped it for lack of
// a subscriber, and the audit log never learned of the unlock.
func TestExternalBrokerQueuesForGatewayWhileItIsAway(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	brokerURL := standaloneBroker(t, dir)
	httpAddr := testutil.FreeAddr(t)
	gwConfig := func(c *server.Config) {
		c.ExternalBroker, c.HTTPAddr = brokerURL, httpAddr
		c.TwoFA.Mode = twofa.ModeOff // key pairing without a code; 2FA is not the subject
	}
	g := startGateway(t, dir, gwConfig)
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)

	// The cars, with their local link.
	fleet := harness.MustStartFleet(t, harness.FleetOptions{BrokerURL: brokerURL, Creds: creds,
		TelemetryInterval: time.Second, MaxReconnectInterval: time.Second})
	garage, link := fleet.Garage, fleet.Link
	waitOnline(t, g, vin)
	_, sess, key := loginKey(t, g, "alice", brokerURL, vin)
	waitSynced(t, g, vin)

	// The gateway goes away; the broker and the car stay.
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := phone.LocalSend(context.Background(), link.Addr(), sess.LinkTrust(), key, "alice", phone.Request{VIN: vin, Action: protocol.ActionUnlock})
	if err != nil || res.Status != protocol.ResultExecuted {
		t.Fatalf("local unlock: %+v %v", res, err)
	}
	car, _ := garage.Car(vin)
	// The broker takes the entry, but the car keeps it until the gateway has filed it.
	if pending, err := car.Journal(0, 10); err != nil || len(pending) != 1 {
		t.Fatalf("journal while the gateway is away: %v %v", pending, err)
	}

	// The gateway comes back on the same data: the broker hands over the queued journal.
	g = startGateway(t, dir, gwConfig)
	testutil.Eventually(t, 10*time.Second, func() error {
		evs, err := g.Audit().Query(audit.Filter{VIN: vin, Limit: 1000})
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if ev.Kind == audit.KindVehicle && ev.CmdID == res.ID && ev.Outcome == protocol.ResultExecuted {
				return nil
			}
		}
		return errors.New("the local unlock done while the gateway was away is not in its audit log")
	})
	testutil.Eventually(t, 10*time.Second, func() error {
		if pending, err := car.Journal(0, 10); err != nil || len(pending) != 0 {
			return fmt.Errorf("journal once the gateway filed it: %v %v", pending, err)
		}
		return nil
	})
}
