package keys

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/whitelist"
)

// recorder is the bus: it keeps what was published. The real buses are tested in pkg/mqttc
// and end to end in gateway/server.
type recorder struct {
	mu   sync.Mutex
	msgs []mqttc.Message
}

func (r *recorder) Publish(_ context.Context, topic string, qos byte, retain bool, p []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, mqttc.Message{Topic: topic, Payload: p, QoS: qos, Retained: retain})
	return nil
}
func (r *recorder) Subscribe(context.Context, string, byte, mqttc.Handler) error { return nil }
func (r *recorder) Connected() bool                                              { return true }
func (r *recorder) Close() error                                                 { return nil }

// codeFactor accepts exactly the code "123456".
type codeFactor struct{}

func (codeFactor) RequireForKeyChange(user, session, action, code string) error {
	switch code {
	case "123456":
		return nil
	case "":
		return protocol.Refuse(protocol.ReasonTOTPRequired, "code needed")
	}
	return protocol.Refuse(protocol.ReasonTOTPInvalid, "wrong code")
}

type ring struct{ cur, prev *sign.Signer }

func (r *ring) Current() *sign.Signer  { return r.cur }
func (r *ring) Previous() *sign.Signer { return r.prev }

const vin = "1HGCM82633A004352"

type fixture struct {
	t    *testing.T
	st   *store.Store
	svc  *Service
	bus  *recorder
	ring *ring
	clk  *clocktest.Fake
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "g.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	lg, err := audit.Open(st.KV())
	if err != nil {
		t.Fatal(err)
	}
	gk, _ := sign.Generate()
	f := &fixture{t: t, st: st, bus: &recorder{}, ring: &ring{cur: gk}, clk: clocktest.New(time.UnixMilli(1_800_000_000_000))}
	f.svc, err = New(st, lg, f.ring, f.bus, codeFactor{}, f.clk, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.AddVehicles([]store.Vehicle{{VIN: vin}}); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"alice", "bob", "carol"} {
		if err := st.AddUser(store.User{Name: u, PasswordHash: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Assign(vin, "alice", protocol.RoleOwner); err != nil {
		t.Fatal(err)
	}
	return f
}

// ack delivers a whitelist acknowledgement on vin's topic that names forVIN and version v.
func (f *fixture) ack(v uint64, forVIN string) {
	b, _ := json.Marshal(protocol.KeysAck{V: 1, VIN: forVIN, Version: v})
	f.svc.OnAck(mqttc.Message{Topic: "v/" + vin + "/keys/ack", Payload: b})
}

func phoneKey(t *testing.T) (*sign.Signer, string) {
	s, _ := sign.Generate()
	pub, _ := sign.EncodePublic(s.Public())
	return s, pub
}

func reasonOf(err error) protocol.Reason { return protocol.ReasonOf(err) }

func TestPairShareRevoke(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, alicePub := phoneKey(t)
	if _, err := f.svc.Pair(ctx, "alice", "s1", vin, alicePub, "phone", ""); reasonOf(err) != protocol.ReasonTOTPRequired {
		t.Fatalf("pair without code: %v", err)
	}
	if _, err := f.svc.Pair(ctx, "bob", "s2", vin, alicePub, "", "123456"); reasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("pair by a user without a role: %v", err)
	}
	if _, err := f.svc.Pair(ctx, "alice", "s1", "2HGCM82633A004352", alicePub, "", "123456"); reasonOf(err) != protocol.ReasonVehicleUnknown {
		t.Fatalf("pair on unknown car: %v", err)
	}
	if _, err := f.svc.Pair(ctx, "alice", "s1", vin, "not-a-key", "", "123456"); reasonOf(err) != protocol.ReasonBadRequest {
		t.Fatalf("pair with garbage key: %v", err)
	}
	ak, err := f.svc.Pair(ctx, "alice", "s1", vin, alicePub, "phone", "123456")
	if err != nil {
		t.Fatal(err)
	}
	if ak.Role != protocol.RoleOwner || len(ak.Channels) != 2 {
		t.Fatalf("owner key: %+v", ak)
	}
	if _, err := f.svc.Pair(ctx, "alice", "s1", vin, alicePub, "", "123456"); reasonOf(err) != protocol.ReasonDuplicate {
		t.Fatalf("pair twice: %v", err)
	}
	// Share: only owners, only driver/valet, with a code.
	if _, err := f.svc.Share(ctx, "bob", "s2", ShareRequest{VIN: vin, User: "carol", Role: protocol.RoleDriver, TOTP: "123456"}); reasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("share by non-owner: %v", err)
	}
	if _, err := f.svc.Share(ctx, "alice", "s1", ShareRequest{VIN: vin, User: "bob", Role: protocol.RoleOwner, TOTP: "123456"}); reasonOf(err) != protocol.ReasonBadRequest {
		t.Fatalf("share as owner: %v", err)
	}
	if _, err := f.svc.Share(ctx, "alice", "s1", ShareRequest{VIN: vin, User: "bob", Role: protocol.RoleValet, TOTP: "000000"}); reasonOf(err) != protocol.ReasonTOTPInvalid {
		t.Fatalf("share with wrong code: %v", err)
	}
	until := f.clk.Now().Add(24 * time.Hour).UnixMilli()
	if _, err := f.svc.Share(ctx, "alice", "s1", ShareRequest{VIN: vin, User: "bob", Role: protocol.RoleValet, NotAfterMs: until, Channels: []string{"local"}, TOTP: "123456"}); err != nil {
		t.Fatal(err)
	}
	_, bobPub := phoneKey(t)
	bk, err := f.svc.Pair(ctx, "bob", "s2", vin, bobPub, "", "123456")
	if err != nil {
		t.Fatal(err)
	}
	if bk.Role != protocol.RoleValet || bk.NotAfterMs != until || len(bk.Channels) != 1 || bk.Channels[0] != "local" {
		t.Fatalf("shared key does not carry the share's terms: %+v", bk)
	}
	// Bob sees his own key only; Alice sees both.
	if st, _ := f.svc.List("bob", vin); len(st.Keys) != 1 {
		t.Fatalf("bob sees %d keys", len(st.Keys))
	}
	if st, _ := f.svc.List("alice", vin); len(st.Keys) != 2 || st.Version != 2 {
		t.Fatalf("alice sees %+v", st)
	}
	if _, err := f.svc.List("carol", vin); reasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("stranger lists keys: %v", err)
	}
	// Bob may not revoke Alice's key; Alice may not revoke her last owner key without the flag.
	if _, err := f.svc.Revoke(ctx, "bob", "s2", RevokeRequest{VIN: vin, KeyID: ak.ID, TOTP: "123456"}); reasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("non-owner revokes owner key: %v", err)
	}
	if _, err := f.svc.Revoke(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: ak.ID, TOTP: "123456"}); !errors.Is(err, ErrLastOwnerKey) {
		t.Fatalf("last owner key revoked without flag: %v", err)
	}
	if _, err := f.svc.Revoke(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: bk.ID}); reasonOf(err) != protocol.ReasonTOTPRequired {
		t.Fatalf("revoke without code: %v", err)
	}
	v, err := f.svc.Revoke(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: bk.ID, TOTP: "123456"})
	if err != nil || v != 3 {
		t.Fatalf("revoke: version %d, %v", v, err)
	}
	if _, err := f.svc.Revoke(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: bk.ID, TOTP: "123456"}); reasonOf(err) != protocol.ReasonKeyRevoked {
		t.Fatalf("revoke twice: %v", err)
	}
	if _, err := f.svc.Revoke(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: "nope", TOTP: "123456"}); reasonOf(err) != protocol.ReasonKeyUnknown {
		t.Fatalf("revoke unknown key: %v", err)
	}
	if _, err := f.svc.Revoke(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: ak.ID, TOTP: "123456", AllowLastOwner: true}); err != nil {
		t.Fatalf("revoke last owner key with flag: %v", err)
	}

	// Every version was published retained, signed by the gateway, and the car would accept
	// each in turn.
	f.bus.mu.Lock()
	msgs := append([]mqttc.Message(nil), f.bus.msgs...)
	f.bus.mu.Unlock()
	if len(msgs) != 4 {
		t.Fatalf("%d whitelists published, want 4", len(msgs))
	}
	var stored uint64
	for _, m := range msgs {
		if m.Topic != "v/"+vin+"/keys" || !m.Retained || m.QoS != 1 {
			t.Fatalf("published %+v", m)
		}
		var env protocol.Envelope
		json.Unmarshal(m.Payload, &env)
		wl, err := whitelist.Verify(env, vin, stored, []*ecdsa.PublicKey{f.ring.cur.Public()})
		if err != nil {
			t.Fatalf("car would refuse version after %d: %v", stored, err)
		}
		stored = wl.Version
	}
	if wl := f.svc.Whitelist(vin); wl.Version != 4 {
		t.Fatalf("current whitelist version %d", wl.Version)
	}
	// Every change is audited, without key material.
	lg, _ := audit.Open(f.st.KV())
	evs, _ := lg.Query(audit.Filter{Kind: audit.KindKeys})
	if len(evs) != 5 { // pair, share, pair, revoke, revoke
		t.Fatalf("%d key audit records", len(evs))
	}
}

// Sharing again changes the terms of the keys the user already paired, in the same
// transaction as the role, and the car gets them with the next whitelist version: an owner
// who downgrades a driver to valet, local only, until tomorrow, does not leave the driver's
// key as it was.
func TestReshareReachesPairedKeys(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.svc.Share(ctx, "alice", "s1", ShareRequest{VIN: vin, User: "bob", Role: protocol.RoleDriver, TOTP: "123456"}); err != nil {
		t.Fatal(err)
	}
	_, bobPub := phoneKey(t)
	bk, err := f.svc.Pair(ctx, "bob", "s2", vin, bobPub, "", "123456")
	if err != nil || bk.Role != protocol.RoleDriver || len(bk.Channels) != 2 {
		t.Fatalf("driver's key: %+v %v", bk, err)
	}
	before := f.svc.Status(vin).Version
	until := f.clk.Now().Add(24 * time.Hour).UnixMilli()
	if _, err := f.svc.Share(ctx, "alice", "s1", ShareRequest{VIN: vin, User: "bob", Role: protocol.RoleValet, NotAfterMs: until, Channels: []string{protocol.ChannelLocal}, TOTP: "123456"}); err != nil {
		t.Fatal(err)
	}
	wl := f.svc.Whitelist(vin)
	if wl.Version != before+1 {
		t.Fatalf("whitelist version %d after the new share, want %d", wl.Version, before+1)
	}
	for _, k := range wl.Keys {
		if k.ID == bk.ID && (k.Role != protocol.RoleValet || k.NotAfterMs != until || len(k.Channels) != 1 || k.Channels[0] != protocol.ChannelLocal) {
			t.Fatalf("bob's key after the downgrade: %+v", k)
		}
	}
	var env protocol.Envelope
	f.bus.mu.Lock()
	json.Unmarshal(f.bus.msgs[len(f.bus.msgs)-1].Payload, &env)
	f.bus.mu.Unlock()
	if sent, err := whitelist.Verify(env, vin, before, []*ecdsa.PublicKey{f.ring.cur.Public()}); err != nil || sent.Version != wl.Version {
		t.Fatalf("the new version was not published: %+v %v", sent, err)
	}
	if v, _ := f.st.GetVehicle(vin); v.Users["bob"] != protocol.RoleValet {
		t.Fatalf("bob's role on the car: %q", v.Users["bob"])
	}
	lg, _ := audit.Open(f.st.KV())
	evs, _ := lg.Query(audit.Filter{Kind: audit.KindKeys})
	found := false
	for _, e := range evs {
		found = found || e.Outcome == "shared" && strings.Contains(e.Detail, "role=valet") && strings.Contains(e.Detail, "keys_updated=1")
	}
	if !found {
		t.Fatalf("no audit record of the new share: %+v", evs)
	}
}

// barrierFactor accepts any code once both revokers have passed the early checks, so that the
// two revocations below race for the car's lock.
type barrierFactor struct{ ready *sync.WaitGroup }

func (b barrierFactor) RequireForKeyChange(user, session, action, code string) error {
	b.ready.Done()
	b.ready.Wait()
	return nil
}

// Two owners revoking each other's key at the same time: one wins, the other is told it would
// remove the last owner key. The car is never left without one.
func TestConcurrentRevokesKeepAnOwnerKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if err := f.st.Assign(vin, "bob", protocol.RoleOwner); err != nil {
		t.Fatal(err)
	}
	_, alicePub := phoneKey(t)
	_, bobPub := phoneKey(t)
	ak, err := f.svc.Pair(ctx, "alice", "s1", vin, alicePub, "", "123456")
	if err != nil {
		t.Fatal(err)
	}
	bk, err := f.svc.Pair(ctx, "bob", "s2", vin, bobPub, "", "123456")
	if err != nil {
		t.Fatal(err)
	}
	var ready sync.WaitGroup
	ready.Add(2)
	f.svc.tfa = barrierFactor{&ready}
	errs := make(chan error, 2)
	go func() {
		_, err := f.svc.Revoke(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: bk.ID, TOTP: "123456"})
		errs <- err
	}()
	go func() {
		_, err := f.svc.Revoke(ctx, "bob", "s2", RevokeRequest{VIN: vin, KeyID: ak.ID, TOTP: "123456"})
		errs <- err
	}()
	var ok, last int
	for range 2 {
		switch err := <-errs; {
		case err == nil:
			ok++
		case errors.Is(err, ErrLastOwnerKey) && reasonOf(err) == protocol.ReasonForbidden:
			last++
		default:
			t.Fatalf("unexpected: %v", err)
		}
	}
	if ok != 1 || last != 1 {
		t.Fatalf("%d revocations went through and %d were refused; want one each", ok, last)
	}
	active := 0
	for _, k := range f.svc.Whitelist(vin).Keys {
		if k.RevokedAtMs == 0 {
			active++
		}
	}
	if active != 1 {
		t.Fatalf("%d owner keys left unrevoked, want 1", active)
	}
}
