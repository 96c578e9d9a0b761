package phone

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"telematics/pkg/api/apitest"
	"telematics/pkg/phone/phonetest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

func newFakeGateway(t *testing.T) *apitest.Gateway { return apitest.NewGateway(t, "app-token") }

func session(g *apitest.Gateway) *Session {
	return &Session{Gateway: g.URL, User: testUser, Token: "app-token", ExpiresAtMs: time.Now().Add(time.Hour).UnixMilli()}
}

func TestPairKeySendsOnlyThePublicHalf(t *testing.T) {
	g := newFakeGateway(t)
	key := newKey(t)
	g.On("POST /v1/keys/pair", func(b []byte) (int, any) {
		var in struct {
			PublicKey string `json:"public_key"`
		}
		_ = json.Unmarshal(b, &in)
		pub, err := sign.DecodePublic(in.PublicKey)
		if err != nil {
			return 400, map[string]string{"error": "bad_request", "message": err.Error()}
		}
		k := phonetest.KeyFor(key, testUser, protocol.RoleOwner)
		k.ID = sign.KeyID(pub) // the gateway derives the id from what it got
		return 201, k
	})
	k, err := PairKey(context.Background(), session(g), key, testVIN, "pixel", "123456")
	if err != nil {
		t.Fatal(err)
	}
	if k.ID != key.KID() || k.Role != protocol.RoleOwner {
		t.Fatalf("paired %+v", k)
	}
	req, body := g.Last()
	pub, _ := sign.EncodePublic(key.Public())
	want := map[string]any{"vin": testVIN, "public_key": pub, "label": "pixel", "totp": "123456"}
	if req != "POST /v1/keys/pair" || len(body) != len(want) {
		t.Fatalf("%s %v", req, body)
	}
	for f, v := range want {
		if body[f] != v {
			t.Fatalf("body field %s = %v, want %v", f, body[f], v)
		}
	}
	assertNoSecret(t, key, g.Bodies()...)

	// A gateway that registered another key than ours is not believed.
	g.On("POST /v1/keys/pair", func([]byte) (int, any) { return 201, protocol.WhitelistKey{ID: "someone-else"} })
	if _, err := PairKey(context.Background(), session(g), key, testVIN, "", ""); err == nil || !strings.Contains(err.Error(), "not this phone's key") {
		t.Fatalf("mismatched key id: %v", err)
	}
	if _, err := PairKey(context.Background(), session(g), nil, testVIN, "", ""); !errors.Is(err, ErrNoKey) {
		t.Fatalf("nil key: %v", err)
	}
}
