package keys

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"telematics/gateway/store"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

func TestAcksAndRestart(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, pub := phoneKey(t)
	if _, err := f.svc.Pair(ctx, "alice", "s", vin, pub, "", "123456"); err != nil {
		t.Fatal(err)
	}
	ack := f.ack
	if st := f.svc.Status(vin); st.InSync || st.AckedVersion != 0 {
		t.Fatalf("before ack: %+v", st)
	}
	ack(7, vin)                 // a version the gateway never issued
	ack(1, "2HGCM82633A004352") // names another car
	if st := f.svc.Status(vin); st.AckedVersion != 0 {
		t.Fatalf("bogus acks accepted: %+v", st)
	}
	ack(1, vin)
	if st := f.svc.Status(vin); !st.InSync || st.AckedVersion != 1 {
		t.Fatalf("after ack: %+v", st)
	}
	// A restarted registry remembers versions and acknowledgements.
	svc2, err := New(f.st, f.svc.audit, f.ring, f.bus, codeFactor{}, f.clk, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if st := svc2.Status(vin); st.Version != 1 || st.AckedVersion != 1 || len(st.Keys) != 1 {
		t.Fatalf("after restart: %+v", st)
	}
	if n := svc2.PublishAll(ctx); n != 1 {
		t.Fatalf("PublishAll published %d", n)
	}
}

// Key changes of many cars run at once (a fleet-wide revocation), several per car: every
// change gets its own version, each car's versions have no gaps, and the last whitelist
// published for each car is its newest one, so the retained message the car gets is current.
func TestConcurrentChangesKeepVersionsInOrder(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const cars, perCar = 12, 4
	vins := make([]string, cars)
	for i := range vins {
		vins[i] = fmt.Sprintf("1HGCM82633A%06d", 100+i)
		if err := f.st.AddVehicles([]store.Vehicle{{VIN: vins[i]}}); err != nil {
			t.Fatal(err)
		}
		if err := f.st.Assign(vins[i], "alice", protocol.RoleOwner); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, cars*perCar)
	for _, v := range vins {
		for range perCar {
			wg.Go(func() {
				_, pub := phoneKey(t)
				if _, err := f.svc.Pair(ctx, "alice", "s1", v, pub, "phone", "123456"); err != nil {
					errs <- fmt.Errorf("pair on %s: %w", v, err)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	last := map[string]uint64{}
	seen := map[string][]uint64{}
	for _, m := range f.bus.msgs {
		var env protocol.Envelope
		if err := json.Unmarshal(m.Payload, &env); err != nil {
			t.Fatal(err)
		}
		doc, err := sign.Verify(env, f.ring.cur.Public())
		if err != nil {
			t.Fatalf("published whitelist on %s: %v", m.Topic, err)
		}
		var wl protocol.Whitelist
		if err := json.Unmarshal(doc, &wl); err != nil {
			t.Fatal(err)
		}
		seen[wl.VIN] = append(seen[wl.VIN], wl.Version)
		last[wl.VIN] = wl.Version
	}
	for _, v := range vins {
		st := f.svc.Status(v)
		if st.Version != perCar {
			t.Errorf("%s: stored version %d after %d changes", v, st.Version, perCar)
		}
		if last[v] != perCar {
			t.Errorf("%s: versions published in the order %v: the last is not the newest", v, seen[v])
		}
		if wl := f.svc.Whitelist(v); wl == nil || len(wl.Keys) != perCar {
			t.Errorf("%s: whitelist %+v, want %d keys", v, wl, perCar)
		}
	}
}
