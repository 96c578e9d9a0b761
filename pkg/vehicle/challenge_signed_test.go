package vehicle_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/link/linktest"
	"telematics/pkg/vehicle/vehicletest"
)

// signedChallengeBody is a challenge request that p's key signed at tsMs.
func signedChallengeBody(t *testing.T, p *vehicletest.Phone, tsMs int64) []byte {
	t.Helper()
	sig, err := sign.SignRaw(p.Signer.Private(), protocol.ChallengeRequestMessage(vehicletest.VIN, p.Key.ID, tsMs))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(protocol.ChallengeRequest{V: protocol.Version, KeyID: p.Key.ID, TsMs: tsMs, Sig: protocol.EncodeB64(sig)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Case 7 of issue 8, the sibling path: a phone's key id is not secret (the phone sends it in
// the clear, on the link, with every request). Someone next to the car who overheard it asks
// for challenges naming it, without a signature, with a forged one and by replaying the phone's
// own signed request. None of that spends the phone key's budget: the phone still gets a
// challenge bound to its key, and its command is executed.
func TestChallengeKeyBudgetNeedsKeySignature(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	r := linktest.NewRig(t, gw, vehicletest.NewClock(vehicletest.T0), t.TempDir(), false)
	owner := gw.Cast.Owner
	nowMs := r.Clock.Now().UnixMilli()
	overheard := signedChallengeBody(t, owner, nowMs)
	if code, b := r.Post(t, "/v1/link/"+vehicletest.VIN+"/challenge", overheard); code != http.StatusOK {
		t.Fatalf("the phone's signed request: %d %s", code, b)
	}

	unsigned, _ := json.Marshal(protocol.ChallengeRequest{V: protocol.Version, KeyID: owner.Key.ID})
	forgedSig, _ := sign.SignRaw(gw.Cast.Stranger.Signer.Private(), protocol.ChallengeRequestMessage(vehicletest.VIN, owner.Key.ID, nowMs+1))
	forged, _ := json.Marshal(protocol.ChallengeRequest{V: protocol.Version, KeyID: owner.Key.ID, TsMs: nowMs + 1, Sig: protocol.EncodeB64(forgedSig)})
	for label, body := range map[string][]byte{"key id alone": unsigned, "forged signature": forged, "replayed request": overheard} {
		for i := 0; i < 2*vehicle.MaxChallengesPerKey; i++ {
			code, b := r.Post(t, "/v1/link/"+vehicletest.VIN+"/challenge", body)
			var ch protocol.Challenge
			if code == http.StatusOK && (json.Unmarshal(b, &ch) != nil || ch.KeyID != "") {
				t.Fatalf("%s: a challenge of the phone key's budget: %s", label, b)
			}
		}
	}

	r.Clock.Advance(1e6) // a millisecond: the phone's next request is newer than its last
	code, b := r.Post(t, "/v1/link/"+vehicletest.VIN+"/challenge", signedChallengeBody(t, owner, r.Clock.Now().UnixMilli()))
	var ch protocol.Challenge
	if code != http.StatusOK || json.Unmarshal(b, &ch) != nil || ch.KeyID != owner.Key.ID {
		t.Fatalf("the phone's challenge after the others' requests: %d %s", code, b)
	}
	c := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, r.Clock.Now())
	c.Nonce = ch.Nonce
	if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: c, Phone: owner})); res.Status != protocol.ResultExecuted {
		t.Fatalf("the phone's command: %+v", res)
	}
}

// A refused challenge request says its reason once: in "error", not again at the start of
// "message" (the app printed "rate_limited: rate_limited: …").
func TestChallengeRefusalSaysReasonOnce(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	r := linktest.NewRig(t, gw, vehicletest.NewClock(vehicletest.T0), t.TempDir(), false)
	for i := 0; i < vehicle.MaxSharedChallenges; i++ {
		if code, _, b := challengeFor(t, r, ""); code != http.StatusOK {
			t.Fatalf("challenge %d: %d %s", i, code, b)
		}
	}
	code, _, b := challengeFor(t, r, "")
	var e struct {
		Error   protocol.Reason `json:"error"`
		Message string          `json:"message"`
	}
	if code != http.StatusTooManyRequests || json.Unmarshal(b, &e) != nil || e.Error != protocol.ReasonRateLimited {
		t.Fatalf("over the shared budget: %d %s", code, b)
	}
	if strings.HasPrefix(e.Message, string(protocol.ReasonRateLimited)) || e.Message == "" {
		t.Errorf("message %q repeats the reason", e.Message)
	}
}
