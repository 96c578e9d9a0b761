package server_test

import (
	"io"
	"testing"

	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/protocol"
)

// TestRetirePreviousKeyWithUnpairedCar: a car nobody has paired a phone with has no whitelist,
// so no whitelist ever told it to trust the new key and `gateway rotate-key --retire-previous`
// refused for ever, whatever the operator did (a fleet of unpaired cars could never end a
// rotation). A start during a rotation gives such a car an empty whitelist, signed by the key it
// trusts and naming the new one, so it makes the hop like every other car: once it acknowledged
// it and runs on new credentials, the previous key is retired.
func TestRetirePreviousKeyWithUnpairedCar(t *testing.T) {
	t.Parallel()
	dir, mqttAddr := t.TempDir(), testutil.FreeAddr(t)
	withAddr := func(c *server.Config) { c.MQTTAddr = mqttAddr }
	g := startGateway(t, dir, withAddr)
	car := provision(t, g, 1)[0]
	runFleet(t, g.BrokerURL(), []protocol.Credentials{car})
	waitOnline(t, g, car.VIN)
	g.Close()
	if err := server.RotateSigningKey(dir, io.Discard); err != nil {
		t.Fatal(err)
	}

	g = startGateway(t, dir, withAddr)
	waitSynced(t, g, car.VIN) // it has a whitelist signed by a key it trusts, and acknowledged it
	fresh := reissue(t, g, car.VIN)
	runFleet(t, g.BrokerURL(), []protocol.Credentials{fresh})
	waitOnline(t, g, car.VIN)
	// Back on new credentials the car may be sent its whitelist again: retiring waits for the
	// car's acknowledgement of the newest, so the test does too before it stops the gateway.
	waitSynced(t, g, car.VIN)
	g.Close()

	if err := server.RetirePreviousKey(dir, io.Discard); err != nil {
		t.Fatalf("retire once the unpaired car made the hop: %v", err)
	}
	// The car still takes the new key's whitelists: pairing a phone reaches it.
	g = startGateway(t, dir, withAddr)
	waitOnline(t, g, car.VIN)
	addUser(t, g, "alice", car.VIN, protocol.RoleOwner)
	login(t, g, "alice", "", car.VIN)
	waitSynced(t, g, car.VIN)
}
