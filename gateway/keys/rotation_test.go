package keys

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"testing"
	"time"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/whitelist"
)

func TestRotationSignsWithTheKeyTheCarTrusts(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, pub := phoneKey(t)
	if _, err := f.svc.Pair(ctx, "alice", "s", vin, pub, "", "123456"); err != nil {
		t.Fatal(err)
	}
	old := f.ring.cur
	fresh, _ := sign.Generate()
	f.ring.cur, f.ring.prev = fresh, old
	if f.svc.GrantSigner(vin) != old {
		t.Fatal("grants must stay on the old key until the car learned the new one")
	}
	if err := f.svc.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	last := func() protocol.Envelope {
		f.bus.mu.Lock()
		defer f.bus.mu.Unlock()
		var env protocol.Envelope
		json.Unmarshal(f.bus.msgs[len(f.bus.msgs)-1].Payload, &env)
		return env
	}
	ack := func(version uint64) { f.ack(version, vin) } // the car acknowledges version
	wl, err := whitelist.Verify(last(), vin, 1, []*ecdsa.PublicKey{old.Public()})
	if err != nil || len(wl.Trust) != 2 {
		t.Fatalf("rotation whitelist must be signed by the old key and name both: %+v %v", wl, err)
	}
	ack(wl.Version)
	waitFor(t, func() bool { return f.svc.Status(vin).Version == wl.Version+1 })
	if f.svc.GrantSigner(vin) != fresh {
		t.Fatal("grants not moved to the new key after the car acknowledged it")
	}
	wl2, err := whitelist.Verify(last(), vin, wl.Version, []*ecdsa.PublicKey{fresh.Public()})
	if err != nil || len(wl2.Trust) != 1 {
		t.Fatalf("after adoption the whitelist is signed by the new key alone: %+v %v", wl2, err)
	}
	ack(wl2.Version)
	waitFor(t, func() bool { return f.svc.Status(vin).AckedVersion == wl2.Version })

	// A second rotation: the car trusts fresh alone now, so everything stays on fresh until
	// the car acknowledged a version naming the newest key.
	newest, _ := sign.Generate()
	f.ring.cur, f.ring.prev = newest, fresh
	if f.svc.GrantSigner(vin) != fresh {
		t.Fatal("after a second rotation grants must stay on the key the car trusts")
	}
	if err := f.svc.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	wl3, err := whitelist.Verify(last(), vin, wl2.Version, []*ecdsa.PublicKey{fresh.Public()})
	if err != nil || len(wl3.Trust) != 2 {
		t.Fatalf("second rotation whitelist must be signed by the key the car trusts and name both: %+v %v", wl3, err)
	}
	ack(wl3.Version)
	waitFor(t, func() bool { return f.svc.Status(vin).Version == wl3.Version+1 })
	if f.svc.GrantSigner(vin) != newest {
		t.Fatal("grants not moved to the newest key after the car acknowledged it")
	}
	if _, err := whitelist.Verify(last(), vin, wl3.Version, []*ecdsa.PublicKey{newest.Public()}); err != nil {
		t.Fatalf("after the second adoption the whitelist is signed by the newest key: %v", err)
	}
}

// waitFor polls cond until it holds (the registry adopts a key after the car's acknowledgement
// arrives on the bus's goroutine).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	testutil.EventuallyTrue(t, 5*time.Second, cond)
}
