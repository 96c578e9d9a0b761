package phone

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"telematics/pkg/phone/phonetest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// fakeGateway answers the key API with canned responses and records each request.
type fakeGateway struct {
	srv *httptest.Server

	mu      sync.Mutex
	reqs    []string // "METHOD /path?query"
	bodies  [][]byte
	answers map[string]func(body []byte) (int, any) // by "METHOD /path"
}

func newFakeGateway(t *testing.T) *fakeGateway {
	g := &fakeGateway{answers: map[string]func([]byte) (int, any){}}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		g.reqs = append(g.reqs, r.Method+" "+r.URL.RequestURI())
		g.bodies = append(g.bodies, body)
		answer := g.answers[r.Method+" "+r.URL.Path]
		g.mu.Unlock()
		status, out := http.StatusNotFound, any(map[string]string{"error": "bad_request", "message": "no such route"})
		switch {
		case r.Header.Get("Authorization") != "Bearer app-token":
			status, out = http.StatusUnauthorized, map[string]string{"error": "unauthenticated", "message": "no token"}
		case answer != nil:
			status, out = answer(body)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *fakeGateway) on(route string, f func(body []byte) (int, any)) {
	g.mu.Lock()
	g.answers[route] = f
	g.mu.Unlock()
}

func (g *fakeGateway) session() *Session {
	return &Session{Gateway: g.srv.URL, User: testUser, Token: "app-token", ExpiresAtMs: time.Now().Add(time.Hour).UnixMilli()}
}

func (g *fakeGateway) last() (string, map[string]any) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var m map[string]any
	_ = json.Unmarshal(g.bodies[len(g.bodies)-1], &m)
	return g.reqs[len(g.reqs)-1], m
}

func TestPairKeySendsOnlyThePublicHalf(t *testing.T) {
	g := newFakeGateway(t)
	key := newKey(t)
	g.on("POST /v1/keys/pair", func(b []byte) (int, any) {
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
	k, err := PairKey(context.Background(), g.session(), key, testVIN, "pixel", "123456")
	if err != nil {
		t.Fatal(err)
	}
	if k.ID != key.KID() || k.Role != protocol.RoleOwner {
		t.Fatalf("paired %+v", k)
	}
	req, body := g.last()
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
	assertNoSecret(t, key, g.bodies...)

	// A gateway that registered another key than ours is not believed.
	g.on("POST /v1/keys/pair", func([]byte) (int, any) { return 201, protocol.WhitelistKey{ID: "someone-else"} })
	if _, err := PairKey(context.Background(), g.session(), key, testVIN, "", ""); err == nil || !strings.Contains(err.Error(), "not this phone's key") {
		t.Fatalf("mismatched key id: %v", err)
	}
	if _, err := PairKey(context.Background(), g.session(), nil, testVIN, "", ""); !errors.Is(err, ErrNoKey) {
		t.Fatalf("nil key: %v", err)
	}
}
