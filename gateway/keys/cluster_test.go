package keys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/store"
	"telematics/internal/etcdtest"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// cluster is two key registries, as two gateway replicas run them, each on its own etcd
// client of one real (embedded) etcd, publishing to one bus (the broker both would share).
type cluster struct {
	a, b *Service
	st   *store.Store // replica a's
	lg   *audit.Log
	bus  *recorder
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	etcd := etcdtest.Start(t)
	gk, _ := sign.Generate()
	ring := &ring{cur: gk}
	clk := clocktest.New(time.UnixMilli(1_800_000_000_000))
	c := &cluster{bus: &recorder{}}
	open := func() (*Service, *store.Store, *audit.Log) {
		kvs, err := etcdkv.Open(etcdkv.Options{Endpoints: etcd.Endpoints(), Prefix: "/keys-test/", Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		st, err := store.OpenKV(kvs)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		lg, _ := audit.Open(st.KV())
		svc, err := New(st, lg, ring, c.bus, codeFactor{}, clk, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return svc, st, lg
	}
	c.a, c.st, c.lg = open()
	c.b, _, _ = open()
	for _, u := range []string{"alice", "bob"} {
		if err := c.st.AddUser(store.User{Name: u, PasswordHash: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// addCar adds a car owned by alice and bob.
func (c *cluster) addCar(t *testing.T, vin string) {
	t.Helper()
	if err := c.st.AddVehicles([]store.Vehicle{{VIN: vin}}); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"alice", "bob"} {
		if err := c.st.Assign(vin, u, protocol.RoleOwner); err != nil {
			t.Fatal(err)
		}
	}
}

// lastPublished is the version of the last whitelist of vin published on the bus.
func (c *cluster) lastPublished(t *testing.T, vin string) uint64 {
	t.Helper()
	c.bus.mu.Lock()
	defer c.bus.mu.Unlock()
	for i := len(c.bus.msgs) - 1; i >= 0; i-- {
		m := c.bus.msgs[i]
		if m.Topic != protocol.VehicleTopic(vin, protocol.SuffixKeys) {
			continue
		}
		var env protocol.Envelope
		var wl protocol.Whitelist
		if json.Unmarshal(m.Payload, &env) != nil {
			t.Fatal("a published whitelist does not decode")
		}
		if doc, err := env.DocBytes(); err != nil || json.Unmarshal(doc, &wl) != nil {
			t.Fatalf("a published whitelist document does not decode: %v", err)
		}
		return wl.Version
	}
	return 0
}

// Key changes of one car on two replicas at once: every change gets its own version, the
// versions have no gap, both replicas see the newest, and the newest is what was published
// last (what the broker retains).
func TestClusterWhitelistVersionsGapless(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	const car = "1HGCM82633A000001"
	c.addCar(t, car)
	const perReplica = 6
	errs := make([]error, 2*perReplica)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 2 * perReplica {
		svc := c.a
		if i%2 == 1 {
			svc = c.b
		}
		_, pub := phoneKey(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = svc.Pair(context.Background(), "alice", fmt.Sprint("s", i), car, pub, "", "123456")
		}()
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	const want = 2 * perReplica
	for name, svc := range map[string]*Service{"a": c.a, "b": c.b} {
		if st := svc.Status(car); st.Version != want || len(st.Keys) != want {
			t.Errorf("replica %s: version %d with %d keys, want %d and %d", name, st.Version, len(st.Keys), want, want)
		}
	}
	events, err := c.lg.Query(audit.Filter{VIN: car, Kind: audit.KindKeys, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, e := range events {
		if e.Outcome == "paired" {
			seen[e.Detail[strings.LastIndex(e.Detail, "version="):]]++
		}
	}
	for v := 1; v <= want; v++ {
		if n := seen[fmt.Sprint("version=", v)]; n != 1 {
			t.Errorf("version %d made by %d changes, want 1 (audit: %v)", v, n, seen)
		}
	}
	if got := c.lastPublished(t, car); got != want {
		t.Errorf("the last whitelist published is version %d, want the newest, %d", got, want)
	}
}

// Two owners revoke each other's key at once on two replicas: one revocation wins, the other
// is refused as the last owner key, and the car keeps an owner key.
func TestClusterLastOwnerKeyRule(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	ctx := context.Background()
	for round := range 3 {
		car := fmt.Sprintf("1HGCM82633A10000%d", round)
		c.addCar(t, car)
		_, alicePub := phoneKey(t)
		_, bobPub := phoneKey(t)
		ak, err := c.a.Pair(ctx, "alice", "sa", car, alicePub, "", "123456")
		if err != nil {
			t.Fatal(err)
		}
		bk, err := c.b.Pair(ctx, "bob", "sb", car, bobPub, "", "123456")
		if err != nil {
			t.Fatal(err)
		}
		var errA, errB error
		var wg sync.WaitGroup
		start := make(chan struct{})
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			_, errA = c.a.Revoke(ctx, "alice", "sa", RevokeRequest{VIN: car, KeyID: bk.ID, TOTP: "123456"})
		}()
		go func() {
			defer wg.Done()
			<-start
			_, errB = c.b.Revoke(ctx, "bob", "sb", RevokeRequest{VIN: car, KeyID: ak.ID, TOTP: "123456"})
		}()
		close(start)
		wg.Wait()
		won := 0
		for _, err := range []error{errA, errB} {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, ErrLastOwnerKey):
				t.Fatalf("round %d: %v, want success or ErrLastOwnerKey", round, err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d revocations went through, want 1 (a: %v, b: %v)", round, won, errA, errB)
		}
		active := 0
		for _, k := range c.b.Status(car).Keys {
			if k.Role == protocol.RoleOwner && k.RevokedAtMs == 0 {
				active++
			}
		}
		if active != 1 {
			t.Fatalf("round %d: %d active owner keys left, want 1", round, active)
		}
	}
}
