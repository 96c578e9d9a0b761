package vehicle

import (
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/vehicletest"
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
	gw := vehicletest.NewGateway(t)
	dir := t.TempDir()
	clock := vehicletest.NewClock(vehicletest.T0)
	creds := gw.Creds(t, vehicletest.VIN)

	st, err := carstore.Open(filepath.Join(dir, carstore.File))
	if err != nil {
		t.Fatal(err)
	}
	cs := &countingStore{Store: st}
	car, err := NewCar(cs, creds, CarOptions{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	ack := vehicletest.Install(t, car, gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 7}))
	want := protocol.KeysAck{V: protocol.Version, VIN: vehicletest.VIN, Version: 7, TsMs: vehicletest.T0.UnixMilli()}
	if *ack != want {
		t.Fatalf("ack %+v, want %+v", *ack, want)
	}
	if res := car.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0)})); res.Status != protocol.ResultExecuted {
		t.Fatalf("command with the stored whitelist: %+v", res)
	}

	// The retained message again (after a reconnect): acknowledged, not written again.
	payload := gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 7})
	if ack := vehicletest.Install(t, car, payload); ack.Version != 7 {
		t.Fatalf("redelivery acked %+v", ack)
	}
	if n := cs.keySaves.Load(); n != 1 {
		t.Errorf("the whitelist was written %d times, want once", n)
	}
	st.Close()

	// A restarted car still has its keys and its version: it acknowledges, not stores, v7.
	st2 := vehicletest.OpenStore(t, dir)
	cs2 := &countingStore{Store: st2}
	car2, err := NewCar(cs2, creds, CarOptions{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	if v := car2.WhitelistVersion(); v != 7 {
		t.Fatalf("after restart version %d", v)
	}
	vehicletest.Install(t, car2, payload)
	if res := car2.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionLock, vehicletest.T0)})); res.Status != protocol.ResultExecuted {
		t.Fatalf("command after restart: %+v", res)
	}
	if n := cs2.keySaves.Load(); n != 0 {
		t.Errorf("the redelivered whitelist was written %d times after restart", n)
	}
	// A newer one replaces it: with no keys at all, nothing opens any more.
	vehicletest.Install(t, car2, gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 8, NoKeys: true}))
	if res := car2.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0)})); res.Reason != protocol.ReasonKeyUnknown {
		t.Fatalf("command after the key was removed: %+v", res)
	}
}

// TestWhitelistRefusals has one case per reason a car refuses a whitelist; none is acked, and
// the car keeps the whitelist it had (version 5).
func TestWhitelistRefusals(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	forger, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		payload func() []byte
		reason  protocol.Reason
	}{
		{"not signed by the gateway", func() []byte { return gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 6, Signer: forger}) }, protocol.ReasonSignatureInvalid},
		{"document tampered after signing", func() []byte { return gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 6, Tamper: true}) }, protocol.ReasonSignatureInvalid},
		{"unsigned", func() []byte {
			return []byte(`{"doc":"` + protocol.EncodeB64([]byte(`{"v":1,"vin":"`+vehicletest.VIN+`","version":6,"keys":[]}`)) + `"}`)
		}, protocol.ReasonSignatureInvalid},
		{"for another car", func() []byte {
			return gw.Whitelist(t, vehicletest.WhitelistSpec{VIN: vehicletest.OtherVIN, Version: 6})
		}, protocol.ReasonForbidden},
		{"older than the stored one", func() []byte { return gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 4}) }, protocol.ReasonDuplicate},
		{"version zero", func() []byte { return gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 0}) }, protocol.ReasonDuplicate},
		{"not json", func() []byte { return []byte("keys please") }, protocol.ReasonBadRequest},
		{"trust entry is not a key", func() []byte {
			return gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 6, Trust: []string{"bm90IGEga2V5"}})
		}, protocol.ReasonBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := vehicletest.OpenStore(t, t.TempDir())
			cs := &countingStore{Store: st}
			car, err := NewCar(cs, gw.Creds(t, vehicletest.VIN), CarOptions{Clock: vehicletest.NewClock(vehicletest.T0)})
			if err != nil {
				t.Fatal(err)
			}
			vehicletest.Install(t, car, gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 5}))
			ack, err := car.HandleWhitelist(tc.payload())
			if ack != nil || protocol.ReasonOf(err) != tc.reason {
				t.Fatalf("got ack %+v, err %v; want no ack and %q", ack, err, tc.reason)
			}
			if v := car.WhitelistVersion(); v != 5 {
				t.Errorf("version %d after a refusal", v)
			}
			if rec, _, _ := st.LoadKeys(vehicletest.VIN); rec.Version != 5 {
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
	gw := vehicletest.NewGateway(t) // signs with the old key, which the credentials carry
	newKey, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	newGW := &vehicletest.Gateway{Signer: newKey, Cast: gw.Cast}
	dir := t.TempDir()
	clock := vehicletest.NewClock(vehicletest.T0)
	creds := gw.Creds(t, vehicletest.VIN)
	st, err := carstore.Open(filepath.Join(dir, carstore.File))
	if err != nil {
		t.Fatal(err)
	}
	car := newTestCar(t, st, creds, clock)

	// Before the rotation the new key is nobody.
	if _, err := car.HandleWhitelist(newGW.Whitelist(t, vehicletest.WhitelistSpec{Version: 1})); protocol.ReasonOf(err) != protocol.ReasonSignatureInvalid {
		t.Fatalf("whitelist signed by a key not yet trusted: %v", err)
	}
	vehicletest.Install(t, car, gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 1, Trust: []string{vehicletest.EncodePub(t, newKey)}}))

	unlock := func(g *vehicletest.Gateway) protocol.Result {
		clock.Advance(time.Millisecond)
		return car.HandleCommand(g.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, clock.Now())}))
	}
	if res := unlock(newGW); res.Status != protocol.ResultExecuted {
		t.Fatalf("grant signed by the new key: %+v", res)
	}
	if res := unlock(gw); res.Reason != protocol.ReasonSignatureInvalid {
		t.Fatalf("grant signed by the old key only: %+v", res)
	}
	if _, err := car.HandleWhitelist(gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 2})); protocol.ReasonOf(err) != protocol.ReasonSignatureInvalid {
		t.Fatalf("whitelist signed by the old key after the rotation: %v", err)
	}
	vehicletest.Install(t, car, newGW.Whitelist(t, vehicletest.WhitelistSpec{Version: 2}))
	st.Close()

	// A restarted car trusts the new key, not the one in its credentials.
	st2 := vehicletest.OpenStore(t, dir)
	car = newTestCar(t, st2, creds, clock)
	if res := unlock(newGW); res.Status != protocol.ResultExecuted {
		t.Fatalf("after restart, grant signed by the new key: %+v", res)
	}
	if res := unlock(gw); res.Reason != protocol.ReasonSignatureInvalid {
		t.Fatalf("after restart, grant signed by the old key: %+v", res)
	}
	vehicletest.Install(t, car, newGW.Whitelist(t, vehicletest.WhitelistSpec{Version: 3}))
}

// TestTrustBothDuringRotation: the gateway announces [new, old] first, so that grants signed by
// either key are accepted while its own switch-over is in progress.
func TestTrustBothDuringRotation(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	newKey, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	newGW := &vehicletest.Gateway{Signer: newKey, Cast: gw.Cast}
	clock := vehicletest.NewClock(vehicletest.T0)
	car := newTestCar(t, vehicletest.OpenStore(t, t.TempDir()), gw.Creds(t, vehicletest.VIN), clock)
	vehicletest.Install(t, car, gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 1, Trust: []string{vehicletest.EncodePub(t, newKey), vehicletest.EncodePub(t, gw.Signer)}}))
	for _, g := range []*vehicletest.Gateway{gw, newGW} {
		if res := car.HandleCommand(g.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionHonk, vehicletest.T0)})); res.Status != protocol.ResultExecuted {
			t.Fatalf("grant: %+v", res)
		}
	}
	vehicletest.Install(t, car, newGW.Whitelist(t, vehicletest.WhitelistSpec{Version: 2, Trust: []string{vehicletest.EncodePub(t, newKey)}}))
	if res := car.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionHonk, vehicletest.T0)})); res.Reason != protocol.ReasonSignatureInvalid {
		t.Fatalf("old key after it was dropped: %+v", res)
	}
}
