package phone

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"telematics/pkg/api"
	"telematics/pkg/phone/phonetest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

func TestLocalSendChallengeRoundTrip(t *testing.T) {
	key := newKey(t)
	link := phonetest.NewLink(t)
	link.AddCar(testVIN, phonetest.KeyFor(key, testUser, protocol.RoleOwner))

	res, err := LocalSend(context.Background(), link.Addr(), trust(link), key, testUser, Request{VIN: testVIN, Action: protocol.ActionLock})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != protocol.ResultExecuted || res.State[protocol.VSSIsLocked] != true {
		t.Fatalf("result %+v", res)
	}
	bodies := link.Bodies()
	var chReq protocol.ChallengeRequest
	if len(bodies) != 2 || json.Unmarshal(bodies[0], &chReq) != nil || chReq.V != protocol.Version || chReq.KeyID != key.KID() {
		t.Fatalf("want a challenge request naming the key, then a command, got %q", bodies)
	}
	var req protocol.LocalRequest
	if err := json.Unmarshal(bodies[1], &req); err != nil || req.V != protocol.Version {
		t.Fatalf("command body %s: %v", bodies[1], err)
	}
	cmds := link.Commands()
	if len(cmds) != 1 || cmds[0].Nonce == "" || cmds[0].ID != res.ID || cmds[0].KeyID != key.KID() || cmds[0].User != testUser {
		t.Fatalf("commands the car saw: %+v", cmds)
	}
	assertNoSecret(t, key, bodies...)
	// One connection for the exchange (the command reuses the challenge's), closed after it.
	assertConns(t, link, 1)

	// Every command asks for a fresh nonce; an http:// URL works as the address too.
	res2, err := LocalSend(context.Background(), "http://"+link.Addr()+"/", trust(link), key, testUser, Request{VIN: testVIN, Action: protocol.ActionUnlock})
	if err != nil || res2.Status != protocol.ResultExecuted {
		t.Fatalf("second command: %+v %v", res2, err)
	}
	if cmds := link.Commands(); len(cmds) != 2 || cmds[1].Nonce == cmds[0].Nonce {
		t.Fatalf("nonces %q and %q", cmds[0].Nonce, cmds[1].Nonce)
	}
	assertConns(t, link, 2)
}

// assertConns checks that the link accepted want connections in all and that the phone closed
// each when its exchange was over (the server sees the close a moment later).
func assertConns(t *testing.T, link *phonetest.Link, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		accepted, open := link.Conns()
		if accepted != want {
			t.Fatalf("the link accepted %d connections, want %d (one per exchange)", accepted, want)
		}
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open after the exchange", open)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLocalSendRefusals(t *testing.T) {
	key, stranger := newKey(t), newKey(t)
	revoked := phonetest.KeyFor(key, testUser, protocol.RoleOwner)
	revoked.RevokedAtMs = time.Now().Add(-time.Minute).UnixMilli()
	const (
		revokedVIN = "WVWZZZ1JZXW000002"
		valetVIN   = "WVWZZZ1JZXW000003"
		cloudVIN   = "WVWZZZ1JZXW000004"
		unknownVIN = "WVWZZZ1JZXW000009"
	)
	link := phonetest.NewLink(t)
	link.AddCar(testVIN, phonetest.KeyFor(key, testUser, protocol.RoleOwner))
	link.AddCar(revokedVIN, revoked)
	link.AddCar(valetVIN, phonetest.KeyFor(key, testUser, protocol.RoleValet))
	link.AddCar(cloudVIN, phonetest.KeyFor(key, testUser, protocol.RoleOwner, protocol.ChannelCloud))

	// The car's refusals are results, passed through as they are.
	tests := []struct {
		name   string
		vin    string
		action protocol.Action
		signer bool // true: the stranger's key
		reason protocol.Reason
	}{
		{"revoked key", revokedVIN, protocol.ActionUnlock, false, protocol.ReasonKeyRevoked},
		{"role does not allow it", valetVIN, protocol.ActionOpenTrunk, false, protocol.ReasonForbidden},
		{"key not for the local link", cloudVIN, protocol.ActionUnlock, false, protocol.ReasonForbidden},
		{"key not on the whitelist", testVIN, protocol.ActionUnlock, true, protocol.ReasonKeyUnknown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := key
			if tc.signer {
				k = stranger
			}
			res, err := LocalSend(context.Background(), link.Addr(), trust(link), k, testUser, Request{VIN: tc.vin, Action: tc.action})
			if err != nil {
				t.Fatalf("a rejection is a result, not an error: %v", err)
			}
			if res.Status != protocol.ResultRejected || res.Reason != tc.reason || res.ID == "" {
				t.Fatalf("result %+v, want rejected %s", res, tc.reason)
			}
		})
	}

	t.Run("unknown car", func(t *testing.T) {
		_, err := LocalSend(context.Background(), link.Addr(), trust(link), key, testUser, Request{VIN: unknownVIN, Action: protocol.ActionUnlock})
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Reason != protocol.ReasonVehicleUnknown {
			t.Fatalf("got %v, want 404 vehicle_unknown", err)
		}
	})
	t.Run("no key", func(t *testing.T) {
		if _, err := LocalSend(context.Background(), link.Addr(), trust(link), nil, testUser, Request{VIN: testVIN, Action: protocol.ActionLock}); !errors.Is(err, ErrNoKey) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("bad arguments are not sent", func(t *testing.T) {
		before := link.Requests()
		for _, r := range []Request{{VIN: "nope", Action: protocol.ActionLock}, {VIN: testVIN, Action: "fly"}} {
			if _, err := LocalSend(context.Background(), link.Addr(), trust(link), key, testUser, r); err == nil {
				t.Fatalf("%+v accepted", r)
			}
		}
		if _, err := LocalSend(context.Background(), link.Addr(), trust(link), key, "Not A User", Request{VIN: testVIN, Action: protocol.ActionLock}); err == nil {
			t.Fatal("bad user accepted")
		}
		if link.Requests() != before {
			t.Fatal("malformed requests reached the link")
		}
	})
	t.Run("nobody listening", func(t *testing.T) {
		_, err := LocalSend(context.Background(), closedAddr(t), trust(link), key, testUser, Request{VIN: testVIN, Action: protocol.ActionLock})
		if !errors.Is(err, ErrCarUnreachable) || strings.Contains(err.Error(), "Post ") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("car does not answer", func(t *testing.T) {
		const silentVIN = "WVWZZZ1JZXW000005"
		link.Hold(silentVIN)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := LocalSend(ctx, link.Addr(), trust(link), key, testUser, Request{VIN: silentVIN, Action: protocol.ActionLock})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestLocalSendDistrustsOddAnswers(t *testing.T) {
	key := newKey(t)
	car := newCertifiedCar(t, testVIN)
	tests := []struct {
		name      string
		challenge any
		result    any
		status    int
		want      string
	}{
		{"challenge for another car", protocol.Challenge{V: 1, VIN: "WVWZZZ1JZXW000002", Nonce: "n"}, nil, 200, "names car"},
		{"challenge without nonce", protocol.Challenge{V: 1, VIN: testVIN}, nil, 200, "no nonce"},
		{"result for another command", protocol.Challenge{V: 1, VIN: testVIN, Nonce: "n"}, protocol.Result{V: 1, ID: "other", Status: "executed"}, 200, "answered for command"},
		{"unknown status", protocol.Challenge{V: 1, VIN: testVIN, Nonce: "n"}, protocol.Result{V: 1, Status: "maybe"}, 200, "status"},
		{"bad request", protocol.Challenge{V: 1, VIN: testVIN, Nonce: "n"}, map[string]string{"error": "bad_request", "message": "nonce unknown"}, 400, "bad_request: nonce unknown"},
		{"not json", protocol.Challenge{V: 1, VIN: testVIN, Nonce: "n"}, "<html>", 200, "not the expected JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/challenge") {
					car.answer(t, w, r, tc.challenge)
					return
				}
				w.WriteHeader(tc.status)
				if s, ok := tc.result.(string); ok {
					_, _ = w.Write([]byte(s))
					return
				}
				_ = json.NewEncoder(w).Encode(tc.result)
			}))
			defer srv.Close()
			_, err := LocalSend(context.Background(), srv.URL, car.trust, key, testUser, Request{VIN: testVIN, Action: protocol.ActionLock})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}

	// A car that refuses with an error status but a rejected result body: still a result.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/challenge") {
			car.answer(t, w, r, protocol.Challenge{V: 1, VIN: testVIN, Nonce: "n"})
			return
		}
		w.WriteHeader(http.StatusForbidden)
		_ = json.NewEncoder(w).Encode(protocol.Result{V: 1, Status: protocol.ResultRejected, Reason: protocol.ReasonKeyRevoked})
	}))
	defer srv.Close()
	res, err := LocalSend(context.Background(), srv.URL, car.trust, key, testUser, Request{VIN: testVIN, Action: protocol.ActionLock})
	if err != nil || res.Status != protocol.ResultRejected || res.Reason != protocol.ReasonKeyRevoked || res.ID == "" {
		t.Fatalf("got %+v, %v", res, err)
	}
}

// trust is what a phone that logged in to link's gateway trusts.
func trust(link *phonetest.Link) []string { return []string{link.GatewayKey()} }

// certifiedCar is a car's link identity, certified by a gateway of its own (trust): what a
// hand-made link needs to pass the phone's check of the car.
type certifiedCar struct {
	trust []string
	key   ed25519.PrivateKey
	cert  protocol.Envelope
}

func newCertifiedCar(t *testing.T, vin string) certifiedCar {
	t.Helper()
	gw := newKey(t)
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := sign.CertifyLinkKey(gw, vin, pub, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	gwPub, err := sign.EncodePublic(gw.Public())
	if err != nil {
		t.Fatal(err)
	}
	return certifiedCar{trust: []string{gwPub}, key: priv, cert: cert}
}

// answer writes challenge (a protocol.Challenge, or anything else as it is) with the car's
// proof for the phone's request r.
func (c certifiedCar) answer(t *testing.T, w http.ResponseWriter, r *http.Request, challenge any) {
	ch, ok := challenge.(protocol.Challenge)
	var req protocol.ChallengeRequest
	if err := json.NewDecoder(r.Body).Decode(&req); ok && err == nil {
		p, err := sign.ProveCar(c.key, c.cert, req, ch)
		if err != nil {
			t.Error(err)
		}
		ch.Proof = p
		challenge = ch
	}
	_ = json.NewEncoder(w).Encode(challenge)
}
