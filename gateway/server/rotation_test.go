package server_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// TestSigningKeyRotationCarsFollow: `gateway rotate-key` with the gateway stopped; on the next
// start the car learns the new key from a whitelist signed by the old one, and from then on
// takes grants and whitelists signed by the new key. Nothing is re-provisioned.
func TestSigningKeyRotationCarsFollow(t *testing.T) {
	t.Parallel()
	dir, mqttAddr := t.TempDir(), testutil.FreeAddr(t)
	withAddr := func(c *server.Config) { c.MQTTAddr = mqttAddr }
	g := startGateway(t, dir, withAddr)
	oldKID := g.Signer().KID()
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	runFleet(t, "tcp://"+mqttAddr, creds)
	_, _, key := loginKey(t, g, "alice", "", vin)
	waitSynced(t, g, vin)
	g.Close()

	var out bytes.Buffer
	if err := server.RotateSigningKey(dir, &out); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{server.SigningKeyFile: 0o600, server.PrevSigningKeyFile: 0o600} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s: %v %v", name, fi, err)
		}
	}
	if _, err := sign.LoadPublicPEM(filepath.Join(dir, server.PrevPublicKeyFile)); err != nil {
		t.Fatal(err)
	}

	g2 := startGateway(t, dir, withAddr)
	if g2.Signer().KID() == oldKID {
		t.Fatal("the gateway still signs with the old key")
	}
	// The car acknowledges the rotation version (signed by the old key, trusting both), then
	// the version signed by the new key alone.
	waitSynced(t, g2, vin)
	testutil.Eventually(t, 10*time.Second, func() error {
		if wl := whitelistOf(t, g2, vin); wl.Version < 3 {
			return errorf("whitelist version %d, want the adoption version 3", wl.Version)
		}
		return nil
	})
	waitSynced(t, g2, vin)
	// Grants now come from the new key: a cloud command still opens the car. The old
	// vehicle and app tokens still connect (the broker trusts both keys).
	app, _, _ := loginKey(t, g2, "alice", "")
	app.SetKey(key)
	r := sendUntilExecuted(t, app, vin, protocol.ActionUnlock)
	expect(t, r, protocol.ReplyExecuted, "")
	// A second phone paired now gets onto a whitelist signed by the new key.
	app2 := login(t, g2, "alice", "", vin)
	waitSynced(t, g2, vin)
	expect(t, send(t, app2, vin, protocol.ActionLock), protocol.ReplyExecuted, "")
}

// A car provisioned while a rotation is under way is named the key its first whitelist is
// signed with and makes the hop like the cars before it; a second rotation moves it again
// (each hop is tracked per key, not once for good). Cars provisioned before the first
// rotation hold a token of the key the second one retires: those need new credentials
// (docs/OPERATIONS.md), so the second half follows the car added in between.
func TestCarAddedDuringRotationFollowsTheNext(t *testing.T) {
	t.Parallel()
	dir, mqttAddr := t.TempDir(), testutil.FreeAddr(t)
	withAddr := func(c *server.Config) { c.MQTTAddr = mqttAddr }
	rotate := func() {
		t.Helper()
		if err := server.RotateSigningKey(dir, io.Discard); err != nil {
			t.Fatal(err)
		}
	}
	g := startGateway(t, dir, withAddr)
	early := provision(t, g, 1)[0]
	addUser(t, g, "alice", early.VIN, protocol.RoleOwner)
	runFleet(t, "tcp://"+mqttAddr, []protocol.Credentials{early})
	_, _, earlyKey := loginKey(t, g, "alice", "", early.VIN)
	waitSynced(t, g, early.VIN)
	g.Close()
	rotate()

	g = startGateway(t, dir, withAddr)
	late := provision(t, g, 1)[0]
	assign(t, g, late.VIN, "alice", protocol.RoleOwner)
	runFleet(t, "tcp://"+mqttAddr, []protocol.Credentials{late})
	app, _, lateKey := loginKey(t, g, "alice", "", late.VIN)
	waitSynced(t, g, early.VIN, late.VIN)
	expect(t, sendUntilExecuted(t, app, late.VIN, protocol.ActionUnlock), protocol.ReplyExecuted, "")
	app.SetKey(earlyKey)
	expect(t, sendUntilExecuted(t, app, early.VIN, protocol.ActionUnlock), protocol.ReplyExecuted, "")
	g.Close()
	rotate()

	g = startGateway(t, dir, withAddr)
	waitSynced(t, g, late.VIN)
	app = login(t, g, "alice", "")
	app.SetKey(lateKey)
	expect(t, sendUntilExecuted(t, app, late.VIN, protocol.ActionLock), protocol.ReplyExecuted, "")
}
