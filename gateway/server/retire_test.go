package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
	"telematics/pkg/whitelist"
)

// TestRetirePreviousKeyRefusedUntilEveryCarHopped: `gateway rotate-key --retire-previous` is
// refused, naming the car, while the car has not acknowledged a whitelist signed by the new key
// and while it holds a token the old key signed; once it has made the hop (and been given new
// credentials) the previous key is dropped, and from then on a token or a whitelist signed by
// it is refused, while the car keeps working on the new key.
func TestRetirePreviousKeyRefusedUntilEveryCarHopped(t *testing.T) {
	t.Parallel()
	dir, mqttAddr := t.TempDir(), testutil.FreeAddr(t)
	withAddr := func(c *server.Config) { c.MQTTAddr = mqttAddr }
	g := startGateway(t, dir, withAddr)
	cars := provision(t, g, 2)
	car, vin := cars[0], cars[0].VIN
	// A decommissioned car whose credentials are retired never makes the hop: it must not
	// keep the previous key alive.
	if _, err := adminClient(g).Decommission(context.Background(), cars[1].VIN, true); err != nil {
		t.Fatalf("decommission %s: %v", cars[1].VIN, err)
	}
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	runFleet(t, g.BrokerURL(), []protocol.Credentials{car})
	_, _, key := loginKey(t, g, "alice", "", vin)
	waitSynced(t, g, vin)
	oldSigner := g.Signer()
	g.Close()

	retire := func() error { return server.RetirePreviousKey(dir, io.Discard) }
	if err := retire(); !errors.Is(err, server.ErrNoPreviousKey) {
		t.Fatalf("retire without a rotation: %v", err)
	}
	if err := server.RotateSigningKey(dir, io.Discard); err != nil {
		t.Fatal(err)
	}
	// Nothing has reached the car yet.
	err := retire()
	if !errors.Is(err, server.ErrCarsNotHopped) || !strings.Contains(err.Error(), "1 have not acknowledged") ||
		!strings.Contains(err.Error(), vin) {
		t.Fatalf("retire before the car made the hop: %v", err)
	}

	// The car learns the new key and moves onto whitelists signed by it; its token is still
	// the old key's.
	g = startGateway(t, dir, withAddr)
	testutil.Eventually(t, 10*time.Second, func() error {
		wl := whitelistOf(t, g, vin)
		if wl.Version < 3 || wl.AckedVersion != wl.Version {
			return errorf("whitelist %d acknowledged of %d, want the adoption version 3 acknowledged", wl.AckedVersion, wl.Version)
		}
		return nil
	})
	g.Close()
	err = retire()
	if !errors.Is(err, server.ErrCarsNotHopped) || strings.Contains(err.Error(), "have not acknowledged") ||
		!strings.Contains(err.Error(), "1 hold a token not signed by the new key") || !strings.Contains(err.Error(), "reissue") {
		t.Fatalf("retire while the car's token is the old key's: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, server.PrevSigningKeyFile)); err != nil {
		t.Fatalf("a refused retirement touched the previous key: %v", err)
	}

	// New credentials, signed by the new key; the car runs on them.
	g = startGateway(t, dir, withAddr)
	fresh := reissue(t, g, vin)
	runFleet(t, g.BrokerURL(), []protocol.Credentials{fresh})
	waitOnline(t, g, vin)
	g.Close()

	var out bytes.Buffer
	if err := server.RetirePreviousKey(dir, &out); err != nil {
		t.Fatalf("retire once every car made the hop: %v", err)
	}
	for _, name := range []string{server.PrevSigningKeyFile, server.PrevPublicKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still there after the retirement: %v", name, err)
		}
	}
	if !strings.Contains(out.String(), "--gateway-pubkey") {
		t.Errorf("the output does not tell how to restart a standalone broker:\n%s", out.String())
	}

	g = startGateway(t, dir, withAddr)
	// The car executes a grant signed by the new key: it is connected again.
	app := login(t, g, "alice", "")
	app.SetKey(key)
	expect(t, sendUntilExecuted(t, app, vin, protocol.ActionUnlock), protocol.ReplyExecuted, "")
	dial := func(signer *sign.Signer, sub string, role protocol.Role, clientID string) (*mqttc.Paho, error) {
		t.Helper()
		tok, _, err := token.NewIssuer(signer, nil).Issue(sub, role, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return mqttc.Dial(ctx, mqttc.Options{BrokerURL: g.BrokerURL(), ClientID: clientID, Username: sub, Password: tok, CleanSession: true})
	}
	// A token signed by the retired key is refused by the embedded broker.
	if c, err := dial(oldSigner, "alice", protocol.RoleApp, "alice-old"); !errors.Is(err, mqttc.ErrNotAuthorized) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("a token signed by the retired key: %v, want not authorized", err)
	}
	// A whitelist signed by the retired key (one that would even hand trust back to it) is
	// refused by the car: it still takes the gateway's next version, which it could not if
	// it had taken the forged, higher one.
	gw, err := dial(g.Signer(), "gateway", protocol.RoleGateway, "gateway-forger")
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	oldPub, _ := sign.EncodePublic(oldSigner.Public())
	forged, err := whitelist.Sign(oldSigner, protocol.Whitelist{VIN: vin, Version: 100, IssuedAtMs: time.Now().UnixMilli(), Trust: []string{oldPub}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(forged)
	if err := gw.Publish(context.Background(), protocol.VehicleTopic(vin, protocol.SuffixKeys), 1, true, b); err != nil {
		t.Fatal(err)
	}
	login(t, g, "alice", "", vin) // a second phone: a new whitelist version
	waitSynced(t, g, vin)
	expect(t, send(t, app, vin, protocol.ActionLock), protocol.ReplyExecuted, "")
}
