package vehicle_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/link/linktest"
	"telematics/pkg/vehicle/vehicletest"
)

// challengeFor asks vehicletest.VIN for a challenge naming keyID, unsigned ("": an empty body), and
// returns the status and the challenge or error body.
func challengeFor(t *testing.T, r *linktest.Rig, keyID string) (int, protocol.Challenge, []byte) {
	t.Helper()
	var body []byte
	if keyID != "" {
		body, _ = json.Marshal(protocol.ChallengeRequest{V: protocol.Version, KeyID: keyID})
	}
	return challengeWith(t, r, body)
}

// signedChallenge asks vehicletest.VIN for a challenge with a request p signed now.
func signedChallenge(t *testing.T, r *linktest.Rig, p *vehicletest.Phone) (int, protocol.Challenge, []byte) {
	t.Helper()
	return challengeWith(t, r, signedChallengeBody(t, p, r.Clock.Now().UnixMilli()))
}

func challengeWith(t *testing.T, r *linktest.Rig, body []byte) (int, protocol.Challenge, []byte) {
	t.Helper()
	code, b := r.Post(t, "/v1/link/"+vehicletest.VIN+"/challenge", body)
	var ch protocol.Challenge
	if code == http.StatusOK {
		if err := json.Unmarshal(b, &ch); err != nil {
			t.Fatalf("challenge: %s", b)
		}
	}
	return code, ch, b
}

// Case 7 of issue 8: someone next to the car asks for challenges by the hundred, between a
// phone's challenge and its signed command, without a key id, with made-up key ids and with
// the phone's own key id (unsigned: that is the shared budget's). The phone's pending challenge
// is never pushed out: its command is executed. Every budget stays bounded, and a full one is
// refused rate_limited.
func TestChallengeFloodCannotEvictPhone(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	r := linktest.NewRig(t, gw, vehicletest.NewClock(vehicletest.T0), t.TempDir(), false)
	owner := gw.Cast.Owner

	code, ch, b := signedChallenge(t, r, owner)
	if code != http.StatusOK {
		t.Fatalf("the phone's challenge: %d %s", code, b)
	}
	if ch.KeyID != owner.Key.ID {
		t.Errorf("the phone's challenge is not bound to its key: %s", b)
	}
	granted := map[string]int{}
	refused := 0
	flood := func(label, keyID string, n int) {
		for i := 0; i < n; i++ {
			code, _, b := challengeFor(t, r, keyID)
			switch code {
			case http.StatusOK:
				granted[label]++
			case http.StatusTooManyRequests:
				var e struct{ Error protocol.Reason }
				if json.Unmarshal(b, &e) != nil || e.Error != protocol.ReasonRateLimited {
					t.Fatalf("%s: 429 %s", label, b)
				}
				refused++
			default:
				t.Fatalf("%s: %d %s", label, code, b)
			}
		}
	}
	flood("no key id", "", 100)
	for i := 0; i < 100; i++ {
		s, err := sign.Generate()
		if err != nil {
			t.Fatal(err)
		}
		flood("unknown key ids", s.KID(), 1)
	}
	flood("revoked key", gw.Cast.Revoked.Key.ID, 20)
	flood("the phone's key id", owner.Key.ID, 20)
	if granted["no key id"]+granted["unknown key ids"]+granted["revoked key"] != vehicle.MaxSharedChallenges ||
		granted["the phone's key id"] != 0 || refused != 240-vehicle.MaxSharedChallenges {
		t.Errorf("granted %v, refused %d; want %d shared, none for the phone's key, the rest refused",
			granted, refused, vehicle.MaxSharedChallenges)
	}
	// Another phone of the car still gets its own challenge.
	if code, _, b := signedChallenge(t, r, gw.Cast.Valet); code != http.StatusOK {
		t.Errorf("another phone's challenge after the flood: %d %s", code, b)
	}

	c := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, r.Clock.Now())
	c.Nonce = ch.Nonce
	// A challenge bound to the phone's key is no use to another key.
	if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: c, Phone: gw.Cast.LocalOnly})); res.Reason != protocol.ReasonForbidden {
		t.Errorf("another key's command with the phone's challenge: %+v", res)
	}
	if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: c, Phone: owner})); res.Status != protocol.ResultExecuted {
		t.Fatalf("the phone's command after the flood: %+v", res)
	}

	// Budgets refill as challenges expire.
	r.Clock.Advance(protocol.ChallengeLifetimeMs*1e6 + 1e6)
	if code, _, b := challengeFor(t, r, ""); code != http.StatusOK {
		t.Fatalf("a shared challenge once the flood expired: %d %s", code, b)
	}
	n := r.Car.NoncesHeld()
	if n != 1 {
		t.Errorf("%d nonces held after the flood expired, want the one just issued", n)
	}
}
