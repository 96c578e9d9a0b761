package vehicle

import (
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/carstore"
)

// countingStore counts the whitelists written.
type countingStore struct {
	*carstore.Store
	keySaves atomic.Int32
}

func (c *countingStore) SaveKeys(vin string, rec carstore.KeyRecord) error {
	c.keySaves.Add(1)
	return c.Store.SaveKeys(vin, rec)
}

func TestWhitelistStoredAckedAndKeptAcrossRestart(t *testing.T) {
	gw := newTestGateway(t)
	dir := t.TempDir()
	clock := newClock(t0)
	creds := gw.creds(t, testVIN)

	st, err := carstore.Open(filepath.Join(dir, carstore.File))
	if err != nil {
		t.Fatal(err)
	}
	cs := &countingStore{Store: st}
	car, err := NewCar(cs, creds, CarOptions{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	ack := install(t, car, gw.whitelist(t, wlSpec{version: 7}))
	want := protocol.KeysAck{V: protocol.Version, VIN: testVIN, Version: 7, TsMs: t0.UnixMilli()}
	if *ack != want {
		t.Fatalf("ack %+v, want %+v", *ack, want)
	}
	if res := car.HandleCommand(gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, t0)})); res.Status != protocol.ResultExecuted {
		t.Fatalf("command with the stored whitelist: %+v", res)
	}

	// The retained message again (after a reconnect): acknowledged, not written again.
	payload := gw.whitelist(t, wlSpec{version: 7})
	if ack := install(t, car, payload); ack.Version != 7 {
		t.Fatalf("redelivery acked %+v", ack)
	}
	if n := cs.keySaves.Load(); n != 1 {
		t.Errorf("the whitelist was written %d times, want once", n)
	}
	st.Close()

	// A restarted car still has its keys and its version: it acknowledges, not stores, v7.
	st2 := openTestStore(t, dir)
	cs2 := &countingStore{Store: st2}
	car2, err := NewCar(cs2, creds, CarOptions{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	if v := car2.WhitelistVersion(); v != 7 {
		t.Fatalf("after restart version %d", v)
	}
	install(t, car2, payload)
	if res := car2.HandleCommand(gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionLock, t0)})); res.Status != protocol.ResultExecuted {
		t.Fatalf("command after restart: %+v", res)
	}
	if n := cs2.keySaves.Load(); n != 0 {
		t.Errorf("the redelivered whitelist was written %d times after restart", n)
	}
	// A newer one replaces it: with no keys at all, nothing opens any more.
	install(t, car2, gw.whitelist(t, wlSpec{version: 8, noKeys: true}))
	if res := car2.HandleCommand(gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, t0)})); res.Reason != protocol.ReasonKeyUnknown {
		t.Fatalf("command after the key was removed: %+v", res)
	}
}

// TestWhitelistRefusals has one case per reason a car refuses a whitelist; none is acked, and
// the car keeps the whitelist it had (version 5).
func TestWhitelistRefusals(t *testing.T) {
	gw := newTestGateway(t)
	forger, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		payload func() []byte
		reason  protocol.Reason
	}{
		{"not signed by the gateway", func() []byte { return gw.whitelist(t, wlSpec{version: 6, signer: forger}) }, protocol.ReasonSignatureInvalid},
		{"document tampered after signing", func() []byte { return gw.whitelist(t, wlSpec{version: 6, tamper: true}) }, protocol.ReasonSignatureInvalid},
		{"unsigned", func() []byte {
			return []byte(`{"doc":"` + protocol.EncodeB64([]byte(`{"v":1,"vin":"`+testVIN+`","version":6,"keys":[]}`)) + `"}`)
		}, protocol.ReasonSignatureInvalid},
		{"for another car", func() []byte { return gw.whitelist(t, wlSpec{vin: otherVIN, version: 6}) }, protocol.ReasonForbidden},
		{"older than the stored one", func() []byte { return gw.whitelist(t, wlSpec{version: 4}) }, protocol.ReasonDuplicate},
		{"version zero", func() []byte { return gw.whitelist(t, wlSpec{version: 0}) }, protocol.ReasonDuplicate},
		{"not json", func() []byte { return []byte("keys please") }, protocol.ReasonBadRequest},
		{"trust entry is not a key", func() []byte { return gw.whitelist(t, wlSpec{version: 6, trust: []string{"bm90IGEga2V5"}}) }, protocol.ReasonBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := openTestStore(t, t.TempDir())
			cs := &countingStore{Store: st}
			car, err := NewCar(cs, gw.creds(t, testVIN), CarOptions{Clock: newClock(t0)})
			if err != nil {
				t.Fatal(err)
			}
			install(t, car, gw.whitelist(t, wlSpec{version: 5}))
			ack, err := car.HandleWhitelist(tc.payload())
			if ack != nil || protocol.ReasonOf(err) != tc.reason {
				t.Fatalf("got ack %+v, err %v; want no ack and %q", ack, err, tc.reason)
			}
			if v := car.WhitelistVersion(); v != 5 {
				t.Errorf("version %d after a refusal", v)
			}
			if rec, _, _ := st.LoadKeys(testVIN); rec.Version != 5 {
				t.Errorf("stored version %d after a refusal", rec.Version)
			}
			if n := cs.keySaves.Load(); n != 1 {
				t.Errorf("%d writes, want only the first whitelist's", n)
			}
		})
	}
}

// TestTrustRotation: a whitelist signed by the old gateway key that carries trust [new] moves
// the car to the new key, for whitelists and grants, and the car remembers it across a restart.
func TestTrustRotation(t *testing.T) {
	gw := newTestGateway(t) // signs with the old key, which the credentials carry
	newKey, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	newGW := &testGateway{signer: newKey, cast: gw.cast}
	dir := t.TempDir()
	clock := newClock(t0)
	creds := gw.creds(t, testVIN)
	st, err := carstore.Open(filepath.Join(dir, carstore.File))
	if err != nil {
		t.Fatal(err)
	}
	car := newTestCar(t, st, creds, clock)

	// Before the rotation the new key is nobody.
	if _, err := car.HandleWhitelist(newGW.whitelist(t, wlSpec{version: 1})); protocol.ReasonOf(err) != protocol.ReasonSignatureInvalid {
		t.Fatalf("whitelist signed by a key not yet trusted: %v", err)
	}
	install(t, car, gw.whitelist(t, wlSpec{version: 1, trust: []string{encodePub(t, newKey)}}))

	unlock := func(g *testGateway) protocol.Result {
		clock.Advance(time.Millisecond)
		return car.HandleCommand(g.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, clock.Now())}))
	}
	if res := unlock(newGW); res.Status != protocol.ResultExecuted {
		t.Fatalf("grant signed by the new key: %+v", res)
	}
	if res := unlock(gw); res.Reason != protocol.ReasonSignatureInvalid {
		t.Fatalf("grant signed by the old key only: %+v", res)
	}
	if _, err := car.HandleWhitelist(gw.whitelist(t, wlSpec{version: 2})); protocol.ReasonOf(err) != protocol.ReasonSignatureInvalid {
		t.Fatalf("whitelist signed by the old key after the rotation: %v", err)
	}
	install(t, car, newGW.whitelist(t, wlSpec{version: 2}))
	st.Close()

	// A restarted car trusts the new key, not the one in its credentials.
	st2 := openTestStore(t, dir)
	car = newTestCar(t, st2, creds, clock)
	if res := unlock(newGW); res.Status != protocol.ResultExecuted {
		t.Fatalf("after restart, grant signed by the new key: %+v", res)
	}
	if res := unlock(gw); res.Reason != protocol.ReasonSignatureInvalid {
		t.Fatalf("after restart, grant signed by the old key: %+v", res)
	}
	install(t, car, newGW.whitelist(t, wlSpec{version: 3}))
}

// TestTrustBothDuringRotation: the gateway announces [new, old] first, so that grants signed by
// either key are accepted while its own switch-over is in progress.
func TestTrustBothDuringRotation(t *testing.T) {
	gw := newTestGateway(t)
	newKey, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	newGW := &testGateway{signer: newKey, cast: gw.cast}
	clock := newClock(t0)
	car := newTestCar(t, openTestStore(t, t.TempDir()), gw.creds(t, testVIN), clock)
	install(t, car, gw.whitelist(t, wlSpec{version: 1, trust: []string{encodePub(t, newKey), encodePub(t, gw.signer)}}))
	for _, g := range []*testGateway{gw, newGW} {
		if res := car.HandleCommand(g.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionHonk, t0)})); res.Status != protocol.ResultExecuted {
			t.Fatalf("grant: %+v", res)
		}
	}
	install(t, car, newGW.whitelist(t, wlSpec{version: 2, trust: []string{encodePub(t, newKey)}}))
	if res := car.HandleCommand(gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionHonk, t0)})); res.Reason != protocol.ReasonSignatureInvalid {
		t.Fatalf("old key after it was dropped: %+v", res)
	}
}
