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

// Behind a broker that does not tell the gateway which client published a request (here the
// standalone broker, reached over MQTT like mosquitto), a TOTP-authorized command elevates the
// phone key that signed it: the same device's next unlock needs no code, another device of
// the same user does.
func TestStepUpBehindExternalBroker(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	brokerURL := standaloneBroker(t, dir)

	g := startGateway(t, dir, func(c *server.Config) {
		c.ExternalBroker = brokerURL
		c.TwoFA.Mode = twofa.ModeEnrolled
	})
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	runFleet(t, brokerURL, creds)
	waitOnline(t, g, vin)
	// Alice logs in, enrolls, and pairs her phone with a code.
	ctx := context.Background()
	_, code := loginEnrolled(t, g, "alice")
	connect := func(label string) *phone.App {
		key, err := sign.Generate()
		if err != nil {
			t.Fatal(err)
		}
		s, err := phone.Login(ctx, g.HTTPURL(), "alice", password, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := phone.PairKey(ctx, s, key, vin, label, code()); err != nil {
			t.Fatal(err)
		}
		waitSynced(t, g, vin)
		app, err := phone.ConnectWith(ctx, s, phone.ConnectOptions{BrokerURL: brokerURL, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { app.Close() })
		return app
	}
	phoneA := connect("phone")

	expect(t, sendUntilAnswered(t, phoneA, vin, protocol.ActionUnlock), protocol.ReplyRejected, protocol.ReasonTOTPRequired)
	r, err := phoneA.Send(ctx, phone.Request{VIN: vin, Action: protocol.ActionUnlock, TOTP: code()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, r, protocol.ReplyExecuted, "")
	// Step-up: the same phone key, no code.
	expect(t, send(t, phoneA, vin, protocol.ActionOpenTrunk), protocol.ReplyExecuted, "")
	expect(t, send(t, phoneA, vin, protocol.ActionUnlock), protocol.ReplyExecuted, "")

	// A second device of Alice's, paired with a code: its own key is not elevated.
	phoneB := connect("tablet")
	expect(t, sendUntilAnswered(t, phoneB, vin, protocol.ActionUnlock), protocol.ReplyRejected, protocol.ReasonTOTPRequired)
	expect(t, send(t, phoneA, vin, protocol.ActionUnlock), protocol.ReplyExecuted, "")
}
