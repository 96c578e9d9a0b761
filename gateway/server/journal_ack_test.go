package server_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/gateway/audit"
	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/internal/testutil"
	"telematics/pkg/broker"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// startStandaloneAt starts the standalone broker on addr, trusting the signing key of the
// gateway whose data dir is dir, and returns it (the caller or the test's end closes it).
func startStandaloneAt(t *testing.T, dir, addr string) *broker.Broker {
	t.Helper()
	b, err := harness.StartBroker(dir, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// The "also" of issue 8: a journal entry made while the gateway is away is not lost when the
// standalone broker restarts before the gateway is back (a key rotation causes one). The car
// keeps the entry until the gateway has it in its audit log and says so on v/{vin}/events/ack;
// it sends it again to the restarted broker, again until the gateway has it (the copy it sent
// before the gateway was back is lost), and the gateway files it once.
func TestJournalAckedOnceAcrossBrokerRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := testutil.FreeAddr(t)
	brokerURL := "tcp://" + addr
	b := startStandaloneAt(t, dir, addr)
	httpAddr := testutil.FreeAddr(t)
	gwConfig := func(c *server.Config) {
		c.ExternalBroker, c.HTTPAddr = brokerURL, httpAddr
		c.TwoFA.Mode = twofa.ModeOff
	}
	g := startGateway(t, dir, gwConfig)
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)

	fleet := harness.MustStartFleet(t, harness.FleetOptions{BrokerURL: brokerURL, Creds: creds,
		TelemetryInterval: time.Second, MaxReconnectInterval: 200 * time.Millisecond, JournalResendInterval: time.Second})
	garage, link := fleet.Garage, fleet.Link
	waitOnline(t, g, vin)
	_, sess, key := loginKey(t, g, "alice", brokerURL, vin)
	waitSynced(t, g, vin)
	car, _ := garage.Car(vin)

	var sent atomic.Int32
	err := b.Server().Subscribe(protocol.VehicleTopic(vin, protocol.SuffixEvents), 9, func(*mqtt.Client, packets.Subscription, packets.Packet) {
		sent.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	// The gateway goes away; the car unlocks over the link and publishes its journal to the
	// broker, which queues it for the gateway's session.
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := phone.LocalSend(context.Background(), link.Addr(), sess.LinkTrust(), key, "alice", phone.Request{VIN: vin, Action: protocol.ActionUnlock})
	if err != nil || res.Status != protocol.ResultExecuted {
		t.Fatalf("local unlock: %+v %v", res, err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if sent.Load() == 0 {
			return fmt.Errorf("the car has not published its journal")
		}
		pending, err := car.Journal(0, 10)
		if err != nil || len(pending) != 1 || pending[0].CmdID != res.ID {
			return fmt.Errorf("journal %v %v, want the unlock kept", pending, err)
		}
		return nil
	})

	// The broker restarts on its address: what it queued for the gateway is gone. The car
	// reconnects first and sends its entry again at once, to a broker on which the gateway has
	// no session yet: that copy is lost too, and only a later resend reaches the gateway.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2 := startStandaloneAt(t, dir, addr)
	var resent atomic.Int32
	err = b2.Server().Subscribe(protocol.VehicleTopic(vin, protocol.SuffixEvents), 9, func(*mqtt.Client, packets.Subscription, packets.Packet) {
		resent.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if resent.Load() == 0 {
			return fmt.Errorf("the car has not sent its entry to the restarted broker")
		}
		return nil
	})
	g = startGateway(t, dir, gwConfig)

	filed := func() (int, error) {
		evs, err := g.Audit().Query(audit.Filter{VIN: vin, Kind: audit.KindVehicle, Limit: 1000})
		n := 0
		for _, ev := range evs {
			if ev.CmdID == res.ID {
				n++
			}
		}
		return n, err
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		if n, err := filed(); err != nil || n != 1 {
			return fmt.Errorf("the unlock is in the audit log %d times (%v)", n, err)
		}
		if pending, err := car.Journal(0, 10); err != nil || len(pending) != 0 {
			return fmt.Errorf("journal once the gateway filed it: %v %v", pending, err)
		}
		return nil
	})
	// A reconnect sends nothing acknowledged again, and nothing is filed twice.
	if n, _ := filed(); n != 1 {
		t.Fatalf("the unlock is in the audit log %d times", n)
	}
}
