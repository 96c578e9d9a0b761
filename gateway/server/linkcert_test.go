package server_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// TestLocalLinkAcrossRotation: a car's credentials carry a link key certified by the signing
// key of the day; after `gateway rotate-key` a phone that logs in learns both keys and still
// takes the car (certified by the previous key) for itself over the local link; a phone that
// trusts the new key alone refuses it, and sends it nothing, until the car is reissued.
func TestLocalLinkAcrossRotation(t *testing.T) {
	t.Parallel()
	dir, mqttAddr := t.TempDir(), testutil.FreeAddr(t)
	withAddr := func(c *server.Config) { c.MQTTAddr = mqttAddr }
	g := startGateway(t, dir, withAddr)
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	if creds[0].LinkKey == "" || creds[0].LinkCert == nil {
		t.Fatalf("credentials without a link identity: %+v", creds[0])
	}
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	fleet := harness.MustStartFleet(t, harness.FleetOptions{BrokerURL: "tcp://" + mqttAddr, Creds: creds, TelemetryInterval: time.Second})
	_, _, key := loginKey(t, g, "alice", "", vin)
	waitSynced(t, g, vin)
	g.Close()
	if err := server.RotateSigningKey(dir, &testutil.Buffer{}); err != nil {
		t.Fatal(err)
	}
	g = startGateway(t, dir, withAddr)
	_, sess, _ := loginKey(t, g, "alice", "")
	if len(sess.GatewayKeys) != 2 || sess.GatewayKeys[0] != sess.GatewayKey {
		t.Fatalf("login during a rotation: gateway keys %q (current %q)", sess.GatewayKeys, sess.GatewayKey)
	}
	req := phone.Request{VIN: vin, Action: protocol.ActionUnlock}
	res, err := phone.LocalSend(context.Background(), fleet.Link.Addr(), sess.LinkTrust(), key, "alice", req)
	if err != nil || res.Status != protocol.ResultExecuted {
		t.Fatalf("local unlock after the rotation: %+v %v", res, err)
	}
	_, err = phone.LocalSend(context.Background(), fleet.Link.Addr(), []string{sess.GatewayKey}, key, "alice", req)
	if !errors.Is(err, sign.ErrCarNotProven) || protocol.ReasonOf(err) != protocol.ReasonSignatureInvalid {
		t.Fatalf("a phone trusting only the new key: %v", err)
	}
	// Reissued credentials carry a certification by the new key.
	re, err := adminClient(g).ReissueCredentials(context.Background(), vin)
	if err != nil {
		t.Fatal(err)
	}
	if re.LinkCert == nil || re.LinkCert.KID != g.Signer().KID() || re.LinkKey == creds[0].LinkKey {
		t.Fatalf("reissued link identity: cert %+v", re.LinkCert)
	}
}
