package server_test

import (
	"context"
	"testing"

	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// Case 12 of issue 8: a step-up lives as long as the app's MQTT connection. After the
// connection closes, a TOTP-guarded command from a new connection (even under the same login,
// whose client id it reuses) needs a code again.
func TestStepUpEndsOnDisconnect(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), func(c *server.Config) {
		c.TwoFA.Mode = twofa.ModeEnrolled
		// Pairing needs no code here: three codes fit in the ±1-step window without waiting.
		c.TwoFA.Actions = []string{string(protocol.ActionUnlock), string(protocol.ActionOpenTrunk)}
	})
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	runFleet(t, g.BrokerURL(), creds)
	waitOnline(t, g, vin)

	ctx := context.Background()
	sess, code := loginEnrolled(t, g, "alice")
	key, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := phone.PairKey(ctx, sess, key, vin, "phone", ""); err != nil {
		t.Fatal(err)
	}
	waitSynced(t, g, vin)
	connect := func() *phone.App {
		app, err := phone.ConnectWith(ctx, sess, phone.ConnectOptions{Key: key})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { app.Close() })
		return app
	}

	first := connect()
	r, err := first.Send(ctx, phone.Request{VIN: vin, Action: protocol.ActionUnlock, TOTP: code()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, r, protocol.ReplyExecuted, "")
	// Stepped up: the same connection needs no code.
	expect(t, send(t, first, vin, protocol.ActionOpenTrunk), protocol.ReplyExecuted, "")
	first.Close()

	// The same login (the same MQTT client id) on a new connection: no step-up left.
	second := connect()
	expect(t, send(t, second, vin, protocol.ActionUnlock), protocol.ReplyRejected, protocol.ReasonTOTPRequired)
	r, err = second.Send(ctx, phone.Request{VIN: vin, Action: protocol.ActionUnlock, TOTP: code()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, r, protocol.ReplyExecuted, "")
	expect(t, send(t, second, vin, protocol.ActionOpenTrunk), protocol.ReplyExecuted, "")
}
