package link_test

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/link"
	"telematics/pkg/vehicle/link/linktest"
	"telematics/pkg/vehicle/vehicletest"
)

// FuzzChallengeRequest feeds arbitrary bodies to a certified car's challenge endpoint (what any
// stranger on the link can send): no panic; 200 with a challenge, 400 bad_request or 429
// rate_limited; DecodeChallengeRequest takes exactly what the endpoint takes; and a challenge
// answered to a phone nonce carries a proof that verifies for that request.
func FuzzChallengeRequest(f *testing.F) {
	gw := vehicletest.NewGateway(f)
	clock := vehicletest.NewClock(vehicletest.T0)
	car := linktest.NewCar(f, vehicletest.OpenStore(f, f.TempDir()), gw.Creds(f, vehicletest.VIN), clock)
	vehicletest.Install(f, car, gw.Whitelist(f, vehicletest.WhitelistSpec{}))
	garage := vehicle.NewGarage()
	garage.Put(car)
	h := link.NewServer(garage, nil).Handler()
	trust := []*ecdsa.PublicKey{gw.Signer.Public()}

	nonce := protocol.EncodeB64(bytes.Repeat([]byte{9}, 16))
	for _, r := range []protocol.ChallengeRequest{
		{V: 1, PhoneNonce: nonce},
		{V: 1, KeyID: gw.Cast.Owner.Key.ID, TsMs: vehicletest.T0.UnixMilli(), Sig: "AAAA", PhoneNonce: nonce},
		{V: 1, PhoneNonce: "short"},
		{V: 1},
	} {
		b, _ := json.Marshal(r)
		f.Add(b)
	}
	f.Add([]byte(`{"phone_nonce":7}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		clock.Advance(protocol.ChallengeLifetimeMs*time.Millisecond + time.Millisecond) // every earlier challenge expired
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/link/"+vehicletest.VIN+"/challenge", bytes.NewReader(body)))
		req, decErr := link.DecodeChallengeRequest(body)
		if len(body) == 0 {
			decErr = nil
		}
		switch rec.Code {
		case http.StatusOK:
			if decErr != nil {
				t.Fatalf("200 for a body the decoder refuses (%v): %q", decErr, body)
			}
			var ch protocol.Challenge
			if err := json.Unmarshal(rec.Body.Bytes(), &ch); err != nil || ch.VIN != vehicletest.VIN || ch.Nonce == "" {
				t.Fatalf("200 with %s: %v", rec.Body.Bytes(), err)
			}
			if (req.PhoneNonce != "") != (ch.Proof != nil) {
				t.Fatalf("phone nonce %q, proof %v", req.PhoneNonce, ch.Proof)
			}
			if ch.Proof != nil {
				if err := sign.VerifyCarProof(trust, vehicletest.VIN, req, ch, clock.Now()); err != nil {
					t.Fatalf("the car's own proof: %v", err)
				}
			}
		case http.StatusBadRequest, http.StatusTooManyRequests:
			var e struct {
				Error protocol.Reason `json:"error"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || (e.Error != protocol.ReasonBadRequest && e.Error != protocol.ReasonRateLimited) {
				t.Fatalf("%d with %s", rec.Code, rec.Body.Bytes())
			}
			if rec.Code == http.StatusBadRequest && decErr == nil {
				t.Fatalf("400 for a body the decoder takes: %q", body)
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
		}
	})
}
