package phone

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"telematics/pkg/api"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// Fuzz targets for what the phone parses: the gateway's HTTP answers, a car's local-link
// answers (anyone next to the phone can pretend to be the car), replies on app/{user}/reply,
// and its own key file.

// fuzzAnswer is an HTTP server that answers every request with the status and body of the
// current input.
type fuzzAnswer struct {
	mu     sync.Mutex
	status int
	body   []byte
}

func (a *fuzzAnswer) set(status uint16, body []byte) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status = 200 + int(status)%400 // 200..599: what net/http lets a handler write
	a.body = body
	return a.status
}

func (a *fuzzAnswer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	status, body := a.status, a.body
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
}

func fuzzServer(f *testing.F) (*fuzzAnswer, string) {
	a := &fuzzAnswer{}
	srv := httptest.NewServer(a)
	f.Cleanup(srv.Close)
	return a, srv.URL
}

// FuzzGatewayAnswer feeds arbitrary answers of the gateway to the phone's login and key
// listing: no panic; an error status gives an *api.Error with that status, and a success gives
// what the body holds.
func FuzzGatewayAnswer(f *testing.F) {
	sess, _ := json.Marshal(Session{User: "alice", Token: "a.b.c", ExpiresAtMs: 1, ClientIDPrefix: "alice-", BrokerURL: "tcp://127.0.0.1:1883"})
	keys, _ := json.Marshal(map[string]any{"cars": []api.KeyStatus{{VIN: testVIN, Version: 2, AckedVersion: 1}}})
	for _, seed := range []struct {
		status uint16
		body   []byte
	}{
		{0, sess}, {0, keys}, {0, []byte(`[]`)}, {201, []byte(`{"error":"unauthenticated","message":"wrong user name or password"}`)},
		{229, []byte(`{"error":"locked_out"}`)}, {300, []byte("<html>bad gateway</html>")},
	} {
		f.Add(seed.status, seed.body)
	}
	answer, url := fuzzServer(f)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, status uint16, body []byte) {
		code := answer.set(status, body)
		s, err := Login(ctx, url, "alice", "correct horse battery", "")
		checkAnswer(t, code, err)
		if err == nil && (s == nil || s.Gateway != url) {
			t.Fatalf("login session %+v", s)
		}
		_, err = (&Session{Gateway: url, Token: "a.b.c"}).Client().ListAllKeys(ctx)
		checkAnswer(t, code, err)
	})
}

func checkAnswer(t *testing.T, code int, err error) {
	t.Helper()
	var apiErr *api.Error
	switch {
	case code >= 300 && (!errors.As(err, &apiErr) || apiErr.Status != code):
		t.Fatalf("status %d gave %v", code, err)
	case code < 300 && errors.As(err, &apiErr):
		t.Fatalf("status %d gave an API error %v", code, err)
	}
}

// FuzzLinkAnswer feeds arbitrary answers of "the car" to the phone's local-link exchange: no
// panic; a challenge or result is taken only from a success, or (a result) from a rejection the
// car sent with an error status; anything else is an error.
func FuzzLinkAnswer(f *testing.F) {
	ch, _ := json.Marshal(protocol.Challenge{V: 1, VIN: testVIN, Nonce: "AAAAAAAAAAAAAAAAAAAAAA", ExpiresAtMs: 1})
	ok, _ := json.Marshal(protocol.Result{V: 1, ID: "c1", Status: protocol.ResultExecuted, State: map[string]any{"locked": false}})
	no, _ := json.Marshal(protocol.Result{V: 1, ID: "c1", Status: protocol.ResultRejected, Reason: protocol.ReasonKeyRevoked})
	for _, seed := range []struct {
		status    uint16
		body      []byte
		challenge bool
	}{
		{0, ch, true}, {0, ok, false}, {203, no, false}, {200, []byte(`{"error":"bad_request"}`), false}, {0, bytes.Repeat([]byte(" "), protocol.MaxPayloadBytes+1), false},
	} {
		f.Add(seed.status, seed.body, seed.challenge)
	}
	answer, url := fuzzServer(f)
	client, closeLink := newLinkClient()
	f.Cleanup(closeLink)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, status uint16, body []byte, challenge bool) {
		code := answer.set(status, body)
		var out any = new(protocol.Result)
		if challenge {
			out = new(protocol.Challenge)
		}
		err := linkPost(ctx, client, url+"/v1/link/"+testVIN+"/command", map[string]int{"v": 1}, out)
		if err != nil {
			return
		}
		if len(body) > protocol.MaxPayloadBytes {
			t.Fatalf("took an answer of %d bytes", len(body))
		}
		if code >= 300 {
			res, isResult := out.(*protocol.Result)
			if !isResult || res.Status != protocol.ResultRejected {
				t.Fatalf("status %d taken as %+v", code, out)
			}
		}
	})
}

// FuzzReply feeds arbitrary messages on app/{user}/reply to the app: no panic, never a
// blocked client, and a reply reaches only the request it names.
func FuzzReply(f *testing.F) {
	for _, r := range []protocol.Reply{
		{V: 1, ID: "c1", Status: protocol.ReplyAccepted}, {V: 1, ID: "c1", Status: protocol.ReplyExecuted, State: map[string]any{"locked": true}},
		{V: 1, ID: "c2", Status: protocol.ReplyRejected, Reason: protocol.ReasonForbidden},
	} {
		b, _ := json.Marshal(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		ch := make(chan protocol.Reply, 1)
		a := &App{waiters: map[string]chan protocol.Reply{"c1": ch}}
		for range 3 { // more replies than the waiter holds: the client must not block
			a.onReply(mqttc.Message{Topic: "app/alice/reply", Payload: payload})
		}
		select {
		case r := <-ch:
			if r.ID != "c1" {
				t.Fatalf("reply for %q reached the waiter of c1", r.ID)
			}
		default:
		}
	})
}

// FuzzParsePrivateKey parses the phone's key file: no panic, and an accepted key signs what
// its public half verifies.
func FuzzParsePrivateKey(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sec1, _ := x509.MarshalECPrivateKey(k)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(k)
	k384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	sec384, _ := x509.MarshalECPrivateKey(k384)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec384}))
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		priv, err := parsePrivatePEM(b)
		if err != nil {
			return
		}
		s, err := sign.NewSigner(priv)
		if err != nil {
			return
		}
		env, err := s.Sign([]byte("{}"))
		if err != nil {
			t.Fatalf("accepted key cannot sign: %v", err)
		}
		if _, err := sign.Verify(env, s.Public()); err != nil {
			t.Fatalf("signature of an accepted key does not verify: %v", err)
		}
	})
}
