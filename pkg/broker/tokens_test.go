package broker

import (
	"crypto/ecdsa"
	"encoding/json"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// The standalone broker follows the gateway's signed car tokens: such a car's other tokens are
// refused; a message signed by another key, on another car's topic, or older than the one in
// force changes nothing.
func TestFollowCarTokens(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	if err := f.b.FollowCarTokens([]*ecdsa.PublicKey{f.signer.Public()}); err != nil {
		t.Fatal(err)
	}
	oldTok, _, _, err := f.issuer.IssueID(vinA, protocol.RoleVehicle, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	newTok, newJTI, _, err := f.issuer.IssueID(vinA, protocol.RoleVehicle, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCar := f.creds(t, vinB, protocol.RoleVehicle, "")
	connects := func(tok string) bool {
		t.Helper()
		code, err := rawConnect(f.b.MQTTAddr(), protocolV3, creds{vinA, vinA, tok}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return code == connAccepted
	}
	publish := func(signer *sign.Signer, topicVIN string, ct protocol.CarToken) {
		t.Helper()
		ct.V = protocol.Version
		env, err := signer.Seal(ct)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(env)
		if err := f.b.Server().Publish(protocol.CarTokenPrefix+topicVIN, b, true, 1); err != nil {
			t.Fatal(err)
		}
	}

	forger, _ := sign.Generate()
	publish(forger, vinA, protocol.CarToken{VIN: vinA, JTI: "someone-elses", IssuedAtMs: 2000})
	publish(f.signer, vinB, protocol.CarToken{VIN: vinA, JTI: "someone-elses", IssuedAtMs: 2000})
	if !connects(oldTok) || !connects(newTok) {
		t.Fatal("a forged or misaddressed car token changed what is admitted")
	}
	publish(f.signer, vinA, protocol.CarToken{VIN: vinA, JTI: newJTI, IssuedAtMs: 2000})
	if connects(oldTok) {
		t.Fatal("the retired token is still admitted")
	}
	if !connects(newTok) {
		t.Fatal("the current token is refused")
	}
	if code, err := rawConnect(f.b.MQTTAddr(), protocolV3, otherCar, nil); err != nil || code != connAccepted {
		t.Fatalf("a car not on the list: %#x %v", code, err)
	}
	oldJTI := "the-old-one"
	publish(f.signer, vinA, protocol.CarToken{VIN: vinA, JTI: oldJTI, IssuedAtMs: 1000}) // older, replayed
	if connects(oldTok) || !connects(newTok) {
		t.Fatal("an older car token changed what is admitted")
	}
}
