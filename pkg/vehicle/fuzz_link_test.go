package vehicle_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/link"
	"telematics/pkg/vehicle/vehicletest"
)

// FuzzLocalRequest feeds arbitrary bodies to the local link's command endpoint (decoder and
// car): it never panics, answers 200 with a result or 400 bad_request, and never executes a
// request twice. The seeds' nonce is issued afresh before every input.
func FuzzLocalRequest(f *testing.F) {
	gw := vehicle.FuzzGateway(f)
	for _, b := range vehicle.LocalSeeds(f, gw) {
		f.Add(b)
	}
	car := vehicle.FuzzCar(f, gw)
	garage := vehicle.NewGarage()
	garage.Put(car)
	h := link.NewServer(garage, nil).Handler()
	post := func(t *testing.T, body []byte) (int, []byte) {
		req := httptest.NewRequest(http.MethodPost, "/v1/link/"+vehicletest.VIN+"/command", strings.NewReader(string(body)))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Body.Bytes()
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		car.HoldOnlyNonce(vehicle.FuzzNonce, vehicletest.T0.UnixMilli()+protocol.ChallengeLifetimeMs, vehicletest.T0.UnixMilli())

		code, out := post(t, body)
		switch code {
		case http.StatusOK:
			var res protocol.Result
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("200 with %q: %v", out, err)
			}
			vehicle.CheckResult(t, res)
			if res.Status == protocol.ResultExecuted {
				code, out = post(t, body)
				var again protocol.Result
				json.Unmarshal(out, &again)
				if code != http.StatusOK || again.Status != protocol.ResultRejected || again.Reason != protocol.ReasonDuplicate {
					t.Fatalf("the same request again: %d %s", code, out)
				}
			}
		case http.StatusBadRequest:
			var e struct {
				Error protocol.Reason `json:"error"`
			}
			if err := json.Unmarshal(out, &e); err != nil || e.Error != protocol.ReasonBadRequest {
				t.Fatalf("400 with %q", out)
			}
		default:
			t.Fatalf("status %d: %s", code, out)
		}
	})
}
