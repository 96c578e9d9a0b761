package link_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/link"
	"telematics/pkg/vehicle/link/linktest"
	"telematics/pkg/vehicle/vehicletest"
)

// impostor is a stranger's box on the local link posing as vehicletest.VIN's car: it answers
// challenges with answer(phone's request, fresh challenge), and records every request, so a
// test can check that the phone sent it no command.
type impostor struct {
	srv    *httptest.Server
	answer func(req protocol.ChallengeRequest, ch protocol.Challenge) protocol.Challenge

	mu       sync.Mutex
	paths    []string
	commands [][]byte
}

func newImpostor(t *testing.T, answer func(protocol.ChallengeRequest, protocol.Challenge) protocol.Challenge) *impostor {
	b := &impostor{answer: answer}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, protocol.MaxPayloadBytes))
		b.mu.Lock()
		b.paths = append(b.paths, r.URL.Path)
		if strings.HasSuffix(r.URL.Path, "/command") {
			b.commands = append(b.commands, body)
		}
		b.mu.Unlock()
		if !strings.HasSuffix(r.URL.Path, "/challenge") {
			// What a box that collects commands would answer: the phone must never get here.
			_ = json.NewEncoder(w).Encode(protocol.Result{V: protocol.Version, Status: protocol.ResultExecuted})
			return
		}
		var req protocol.ChallengeRequest
		_ = json.Unmarshal(body, &req)
		ch := protocol.Challenge{V: protocol.Version, VIN: vehicletest.VIN, Nonce: protocol.EncodeB64(bytes.Repeat([]byte{7}, 16)),
			ExpiresAtMs: time.Now().Add(10 * time.Second).UnixMilli()}
		_ = json.NewEncoder(w).Encode(b.answer(req, ch))
	}))
	t.Cleanup(b.srv.Close)
	return b
}

// recorder stands between a phone and the genuine car's link and keeps the car's answers to
// challenges: what an eavesdropper on the link hears.
type recorder struct {
	srv     *httptest.Server
	mu      sync.Mutex
	answers []protocol.Challenge
}

func newRecorder(t *testing.T, target string) *recorder {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if !strings.HasSuffix(resp.Request.URL.Path, "/challenge") {
			return nil
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
		var ch protocol.Challenge
		if json.Unmarshal(b, &ch) == nil {
			rec.mu.Lock()
			rec.answers = append(rec.answers, ch)
			rec.mu.Unlock()
		}
		return nil
	}
	rec.srv = httptest.NewServer(proxy)
	t.Cleanup(rec.srv.Close)
	return rec
}

// TestLinkCarProvesItself: over the real link, a phone sends commands to the genuine car, which
// proves itself with the link key its gateway certified, and refuses every box that cannot:
// with another car's key, a certification it made itself, an expired one, another car's
// genuine identity, a replay of the genuine car's answer, or none at all. None of them receives
// a command.
func TestLinkCarProvesItself(t *testing.T) {
	now := time.Now()
	gw := vehicletest.NewGatewayAt(t, now)
	r := linktest.NewRig(t, gw, vehicletest.NewClock(now), t.TempDir(), false)
	owner := gw.Cast.Owner
	trust := gw.PhoneTrust(t)
	send := func(addr string, action protocol.Action) (protocol.Result, error) {
		return phone.LocalSend(context.Background(), addr, trust, owner.Signer, owner.Key.User,
			phone.Request{VIN: vehicletest.VIN, Action: action})
	}

	// The genuine car, heard through an eavesdropper's recorder.
	rec := newRecorder(t, r.Link.URL())
	res, err := send(rec.srv.URL, protocol.ActionUnlock)
	if err != nil || res.Status != protocol.ResultExecuted {
		t.Fatalf("genuine car: %+v %v", res, err)
	}
	if r.Car.State().Locked {
		t.Fatal("the genuine car did not unlock")
	}
	rec.mu.Lock()
	heard := rec.answers
	rec.mu.Unlock()
	if len(heard) != 1 || heard[0].Proof == nil {
		t.Fatalf("the genuine car's answer carries no proof: %+v", heard)
	}
	genuine := heard[0]

	// What a stranger can get: the genuine car's certification (it is on the air), other
	// cars' identities (a car it owns, provisioned by the same gateway), its own keys.
	otherCreds := gw.Creds(t, vehicletest.OtherVIN)
	otherKey, err := sign.ParseLinkKey(otherCreds.LinkKey)
	if err != nil {
		t.Fatal(err)
	}
	_, ownKey, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	ownGateway, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	selfMade, err := sign.CertifyLinkKey(ownGateway, vehicletest.VIN, ownKey.Public().(ed25519.PublicKey), now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// An old head unit's key whose certification ran out (the car was reissued since).
	_, oldKey, _ := ed25519.GenerateKey(nil)
	expired, err := sign.CertifyLinkKey(gw.Signer, vehicletest.VIN, oldKey.Public().(ed25519.PublicKey), now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	prove := func(key ed25519.PrivateKey, cert protocol.Envelope) func(protocol.ChallengeRequest, protocol.Challenge) protocol.Challenge {
		return func(req protocol.ChallengeRequest, ch protocol.Challenge) protocol.Challenge {
			p, err := sign.ProveCar(key, cert, req, ch)
			if err != nil {
				t.Error(err)
			}
			ch.Proof = p
			return ch
		}
	}

	tests := []struct {
		name   string
		answer func(protocol.ChallengeRequest, protocol.Challenge) protocol.Challenge
		reason protocol.Reason
	}{
		{"the genuine certification, another car's key", prove(otherKey, genuine.Proof.Cert), protocol.ReasonSignatureInvalid},
		{"a certification it made itself", prove(ownKey, selfMade), protocol.ReasonSignatureInvalid},
		{"an expired certification of this car", prove(oldKey, expired), protocol.ReasonKeyExpired},
		{"another car's genuine identity", prove(otherKey, *otherCreds.LinkCert), protocol.ReasonForbidden},
		{"a replay of the genuine car's answer", func(protocol.ChallengeRequest, protocol.Challenge) protocol.Challenge { return genuine }, protocol.ReasonSignatureInvalid},
		{"the genuine proof with its own nonce", func(_ protocol.ChallengeRequest, ch protocol.Challenge) protocol.Challenge {
			ch.Proof = genuine.Proof
			return ch
		}, protocol.ReasonSignatureInvalid},
		{"no proof at all", func(_ protocol.ChallengeRequest, ch protocol.Challenge) protocol.Challenge { return ch }, protocol.ReasonUnauthenticated},
		{"a malformed proof", func(_ protocol.ChallengeRequest, ch protocol.Challenge) protocol.Challenge {
			ch.Proof = &protocol.CarProof{Cert: genuine.Proof.Cert, Sig: "not a signature"}
			return ch
		}, protocol.ReasonBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			box := newImpostor(t, tc.answer)
			_, err := send(box.srv.URL, protocol.ActionUnlock)
			if !errors.Is(err, sign.ErrCarNotProven) || protocol.ReasonOf(err) != tc.reason {
				t.Fatalf("got %v (reason %s), want a refusal of the car with %s", err, protocol.ReasonOf(err), tc.reason)
			}
			if !strings.Contains(err.Error(), vehicletest.VIN) {
				t.Errorf("the error does not name the car: %v", err)
			}
			box.mu.Lock()
			defer box.mu.Unlock()
			if len(box.commands) != 0 || len(box.paths) != 1 {
				t.Fatalf("the box received %v: want the challenge request only, no command", box.paths)
			}
		})
	}

	// The genuine car still answers, and locks.
	if res, err := send(r.Link.Addr(), protocol.ActionLock); err != nil || res.Status != protocol.ResultExecuted || !r.Car.State().Locked {
		t.Fatalf("genuine car after the impostors: %+v %v", res, err)
	}
}

// TestLinkUncertifiedCarRefused: a real car whose credentials carry no link certification
// (provisioned before cars had one) answers challenges without a proof, and a phone refuses
// it, unauthenticated, before it signs anything; a phone that trusts no gateway key refuses
// even the certified car.
func TestLinkUncertifiedCarRefused(t *testing.T) {
	now := time.Now()
	gw := vehicletest.NewGatewayAt(t, now)
	st := vehicletest.OpenStore(t, t.TempDir())
	creds := gw.Creds(t, vehicletest.VIN)
	creds.LinkKey, creds.LinkCert = "", nil
	car := linktest.NewCar(t, st, creds, vehicletest.NewClock(now))
	vehicletest.Install(t, car, gw.Whitelist(t, vehicletest.WhitelistSpec{}))
	certified := linktest.NewCar(t, st, gw.Creds(t, vehicletest.OtherVIN), vehicletest.NewClock(now))
	vehicletest.Install(t, certified, gw.Whitelist(t, vehicletest.WhitelistSpec{VIN: vehicletest.OtherVIN}))
	garage := vehicle.NewGarage()
	garage.Put(car)
	garage.Put(certified)
	srv := link.NewServer(garage, nil)
	if err := srv.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	owner := gw.Cast.Owner

	_, err := phone.LocalSend(context.Background(), srv.Addr(), gw.PhoneTrust(t), owner.Signer, owner.Key.User,
		phone.Request{VIN: vehicletest.VIN, Action: protocol.ActionUnlock})
	if !errors.Is(err, sign.ErrCarNotProven) || protocol.ReasonOf(err) != protocol.ReasonUnauthenticated || !strings.Contains(err.Error(), "reissue") {
		t.Fatalf("uncertified car: got %v, want unauthenticated with what to do", err)
	}
	_, err = phone.LocalSend(context.Background(), srv.Addr(), nil, owner.Signer, owner.Key.User,
		phone.Request{VIN: vehicletest.OtherVIN, Action: protocol.ActionUnlock})
	if !errors.Is(err, sign.ErrCarNotProven) || protocol.ReasonOf(err) != protocol.ReasonUnauthenticated || !strings.Contains(err.Error(), "log in") {
		t.Fatalf("phone without a gateway key: got %v", err)
	}
	if !car.State().Locked || !certified.State().Locked {
		t.Fatal("a car was unlocked")
	}
	if n := len(vehicletest.Journal(t, st, vehicletest.VIN)) + len(vehicletest.Journal(t, st, vehicletest.OtherVIN)); n != 0 {
		t.Fatalf("the cars saw %d commands; the phone should have sent none", n)
	}
}

// TestLinkChallengeProof: the car's answer to a challenge request with a phone nonce verifies
// for exactly that request; without a phone nonce (an older phone) it carries no proof; a
// malformed phone nonce is bad_request.
func TestLinkChallengeProof(t *testing.T) {
	now := time.Now()
	gw := vehicletest.NewGatewayAt(t, now)
	r := linktest.NewRig(t, gw, vehicletest.NewClock(now), t.TempDir(), false)
	pub, err := sign.DecodePublic(gw.PhoneTrust(t)[0])
	if err != nil {
		t.Fatal(err)
	}
	nonce := protocol.EncodeB64(bytes.Repeat([]byte{1}, 16))
	req := protocol.ChallengeRequest{V: protocol.Version, PhoneNonce: nonce}
	body, _ := json.Marshal(req)
	code, b := r.Post(t, "/v1/link/"+vehicletest.VIN+"/challenge", body)
	var ch protocol.Challenge
	if code != http.StatusOK || json.Unmarshal(b, &ch) != nil || ch.Proof == nil {
		t.Fatalf("challenge: %d %s", code, b)
	}
	if err := sign.VerifyCarProof([]*ecdsa.PublicKey{pub}, vehicletest.VIN, req, ch, now); err != nil {
		t.Fatalf("the genuine proof: %v", err)
	}
	other := req
	other.PhoneNonce = protocol.EncodeB64(bytes.Repeat([]byte{2}, 16))
	if err := sign.VerifyCarProof([]*ecdsa.PublicKey{pub}, vehicletest.VIN, other, ch, now); protocol.ReasonOf(err) != protocol.ReasonSignatureInvalid {
		t.Fatalf("the proof for another phone nonce: %v", err)
	}
	if err := sign.VerifyCarProof([]*ecdsa.PublicKey{pub}, vehicletest.OtherVIN, req, ch, now); protocol.ReasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("the proof checked for another VIN: %v", err)
	}
	if ch := r.Challenge(t, vehicletest.VIN); ch.Proof != nil {
		t.Fatalf("a request without a phone nonce got a proof: %+v", ch)
	}
	for _, bad := range []string{"short", strings.Repeat("A", 100), "!!!!!!!!!!!!!!!!!!!!!!!!"} {
		body, _ := json.Marshal(protocol.ChallengeRequest{V: protocol.Version, PhoneNonce: bad})
		if code, b := r.Post(t, "/v1/link/"+vehicletest.VIN+"/challenge", body); code != http.StatusBadRequest || !strings.Contains(string(b), "bad_request") {
			t.Fatalf("phone nonce %q: %d %s", bad, code, b)
		}
	}
}

// TestCarLinkIdentityFromCredentials: a car takes its link identity from its credentials, which
// vehicle-sim keeps in its store (0600) across restarts; a link key and a certification that do
// not belong together, or to the car, keep the car from starting.
func TestCarLinkIdentityFromCredentials(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	dir := t.TempDir()
	st := vehicletest.OpenStore(t, dir)
	creds, other := gw.Creds(t, vehicletest.VIN), gw.Creds(t, vehicletest.OtherVIN)
	for name, bad := range map[string]protocol.Credentials{
		"another car's certification": func() protocol.Credentials { c := creds; c.LinkCert = other.LinkCert; return c }(),
		"another car's key":           func() protocol.Credentials { c := creds; c.LinkKey = other.LinkKey; return c }(),
		"a key without certification": func() protocol.Credentials { c := creds; c.LinkCert = nil; return c }(),
	} {
		if _, err := vehicle.NewCar(st, bad, vehicle.CarOptions{Clock: vehicletest.NewClock(vehicletest.T0)}); err == nil || !strings.Contains(err.Error(), "link") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := st.SaveCredentials(creds); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st = vehicletest.OpenStore(t, dir)
	stored, err := st.Credentials()
	if err != nil || len(stored) != 1 || stored[0].LinkKey != creds.LinkKey || stored[0].LinkCert == nil || *stored[0].LinkCert != *creds.LinkCert {
		t.Fatalf("stored credentials %+v, %v", stored, err)
	}
	fi, err := os.Stat(st.Path())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("store file holding the link key: %v %v", fi.Mode(), err)
	}
	if _, err := vehicle.NewCar(st, stored[0], vehicle.CarOptions{Clock: vehicletest.NewClock(vehicletest.T0)}); err != nil {
		t.Fatalf("restart with the stored credentials: %v", err)
	}
}
