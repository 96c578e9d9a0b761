package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"testing"

	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// bodyKinds makes a fresh value of each JSON request body the HTTP API decodes with
// DecodeBody, with a real body of that kind as a seed.
var bodyKinds = []struct {
	make func() any
	seed string
}{
	{func() any { return new(api.LoginRequest) }, `{"username":"alice","password":"correct horse battery","totp":"123456"}`},
	{func() any { return new(api.AddVehiclesRequest) }, `{"vins":["1HGCM82633A004352"],"count":3}`},
	{func() any { return new(api.AssignRequest) }, `{"user":"bob","role":"driver"}`},
	{func() any { return new(api.AddUserRequest) }, `{"username":"bob","password":"correct horse battery"}`},
	{func() any { return new(api.ShareRequest) }, `{"vin":"1HGCM82633A004352","user":"bob","role":"valet","not_after":1800000000000,"channels":["local"],"totp":"123456"}`},
	{func() any { return new(api.RevokeRequest) }, `{"vin":"1HGCM82633A004352","key_id":"k1","totp":"123456","allow_last_owner":true}`},
	{func() any {
		return new(api.PairRequest)
	}, `{"vin":"1HGCM82633A004352","public_key":"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE","label":"phone","totp":"123456"}`},
	{func() any {
		return new(api.TOTPCode)
	}, `{"code":"123456","proof":"p"}`},
}

// FuzzDecodeBody feeds arbitrary bodies to DecodeBody for each request type: no panic, more
// than maxBody bytes is refused, a refusal is bad_request, and an accepted body survives a
// round trip (encode, decode, encode gives the same bytes).
func FuzzDecodeBody(f *testing.F) {
	for i, k := range bodyKinds {
		f.Add(uint8(i), []byte(k.seed))
	}
	f.Add(uint8(0), []byte(`{"username":"`+string(bytes.Repeat([]byte("a"), 70_000))+`"}`))
	f.Add(uint8(1), []byte(`{"vins":null,"count":-1}`))
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		k := bodyKinds[int(kind)%len(bodyKinds)]
		v := k.make()
		err := DecodeBody(httptest.NewRequest("POST", "/", bytes.NewReader(body)), v)
		if err != nil {
			if protocol.ReasonOf(err) != protocol.ReasonBadRequest {
				t.Fatalf("refusal %v, want bad_request", err)
			}
			return
		}
		if len(body) > maxBody {
			t.Fatalf("accepted a body of %d bytes", len(body))
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		v2 := k.make()
		if err := json.Unmarshal(b, v2); err != nil {
			t.Fatalf("re-decode %s: %v", b, err)
		}
		if b2, _ := json.Marshal(v2); !bytes.Equal(b, b2) {
			t.Fatalf("round trip:\n%s\n%s", b, b2)
		}
	})
}
