package keys

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/store"
	"telematics/internal/etcdtest"
	"telematics/internal/testutil"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// whitelistCounter is a broker hook that counts the whitelists the gateway replicas publish,
// per car, and keeps the version of the last one.
type whitelistCounter struct {
	mqtt.HookBase
	mu      sync.Mutex
	count   map[string]int
	version map[string]uint64
}

func newWhitelistCounter() *whitelistCounter {
	return &whitelistCounter{count: map[string]int{}, version: map[string]uint64{}}
}

func (h *whitelistCounter) ID() string { return "whitelist-counter" }
func (h *whitelistCounter) Provides(b byte) bool {
	return b == mqtt.OnPublish
}

func (h *whitelistCounter) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	vin, suffix, ok := protocol.ParseVehicleTopic(pk.TopicName)
	if !ok || suffix != protocol.SuffixKeys || !strings.HasPrefix(cl.ID, "gateway-") {
		return pk, nil
	}
	var env protocol.Envelope
	var wl protocol.Whitelist
	if json.Unmarshal(pk.Payload, &env) == nil {
		if doc, err := env.DocBytes(); err == nil {
			_ = json.Unmarshal(doc, &wl)
		}
	}
	h.mu.Lock()
	h.count[vin]++
	h.version[vin] = wl.Version
	h.mu.Unlock()
	return pk, nil
}

func (h *whitelistCounter) get(vin string) (int, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count[vin], h.version[vin]
}

// Two replicas on one etcd behind one broker; the broker restarts (and forgets every retained
// whitelist). Both replicas reconnect, and exactly one republishes: each car's whitelist
// reaches the new broker once, in its newest version, also for a car whose newest version was
// made on the other replica.
func TestClusterRepublishOnceAfterBrokerRestart(t *testing.T) {
	etcd := etcdtest.Start(t)
	broker := testutil.StartMochi(t, testutil.MochiOptions{Hooks: []mqtt.Hook{new(auth.AllowHook)}})
	gk, _ := sign.Generate()
	keyRing := &ring{cur: gk}

	type replica struct {
		name   string
		svc    atomic.Pointer[Service]
		st     *store.Store
		lostAt atomic.Int64 // unix ms; 0: never lost
		result chan error
		cars   atomic.Int64
	}
	start := func(name string) *replica {
		r := &replica{name: name, result: make(chan error, 4)}
		kvs, err := etcdkv.Open(etcdkv.Options{Endpoints: etcd.Endpoints(), Prefix: "/republish-test/", Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		r.st, err = store.OpenKV(kvs)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.st.Close() })
		bus, err := mqttc.Dial(context.Background(), mqttc.Options{
			BrokerURL: broker.URL(), ClientID: "gateway-" + name, CleanSession: true,
			MinReconnectInterval: 20 * time.Millisecond, MaxReconnectInterval: 200 * time.Millisecond,
			OnConnectionLost: func(error) { r.lostAt.Store(time.Now().UnixMilli()) },
			// As gateway/server does: after a reconnect, republish unless another replica does.
			OnConnect: func(mqttc.Client) {
				lost, svc := r.lostAt.Load(), r.svc.Load()
				if lost == 0 || svc == nil {
					return
				}
				go func() {
					n, err := svc.RepublishAfterReconnect(context.Background(), name, time.UnixMilli(lost))
					r.cars.Add(int64(n))
					r.result <- err
				}()
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bus.Close() })
		lg, _ := audit.Open(r.st.KV())
		svc, err := New(r.st, lg, keyRing, bus, codeFactor{}, nil, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		r.svc.Store(svc)
		return r
	}
	a := start("a")
	cars := []string{"1HGCM82633A000001", "1HGCM82633A000002", "1HGCM82633A000003"}
	if err := a.st.AddUser(store.User{Name: "alice", PasswordHash: "x"}); err != nil {
		t.Fatal(err)
	}
	for _, car := range cars {
		if err := a.st.AddVehicles([]store.Vehicle{{VIN: car}}); err != nil {
			t.Fatal(err)
		}
		if err := a.st.Assign(car, "alice", protocol.RoleOwner); err != nil {
			t.Fatal(err)
		}
		_, pub := phoneKey(t)
		if _, err := a.svc.Load().Pair(context.Background(), "alice", "s", car, pub, "phone", "123456"); err != nil {
			t.Fatal(err)
		}
	}
	b := start("b")
	// The first car's newest version is made on b: a's cache does not hold it.
	_, pub := phoneKey(t)
	if _, err := b.svc.Load().Pair(context.Background(), "alice", "s", cars[0], pub, "tablet", "123456"); err != nil {
		t.Fatal(err)
	}
	newest := b.svc.Load().Whitelist(cars[0]).Version

	broker.Stop()
	counter := newWhitelistCounter()
	testutil.StartMochi(t, testutil.MochiOptions{Addr: broker.Addr, Hooks: []mqtt.Hook{new(auth.AllowHook), counter}})
	for _, r := range []*replica{a, b} {
		select {
		case err := <-r.result:
			if err != nil {
				t.Fatalf("replica %s: %v", r.name, err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("replica %s did not reconnect and decide", r.name)
		}
	}
	if got := a.cars.Load() + b.cars.Load(); got != int64(len(cars)) {
		t.Errorf("replicas published %d (a) + %d (b) whitelists, want %d in all", a.cars.Load(), b.cars.Load(), len(cars))
	}
	if a.cars.Load() != 0 && b.cars.Load() != 0 {
		t.Errorf("both replicas republished: a %d, b %d", a.cars.Load(), b.cars.Load())
	}
	for _, car := range cars {
		n, v := counter.get(car)
		if n != 1 {
			t.Errorf("%s: whitelist published %d times on the restarted broker, want 1", car, n)
		}
		if car == cars[0] && v != newest {
			t.Errorf("%s: version %d published, want the newest %d", car, v, newest)
		}
	}
}

// A replica that claimed the republish and died leaves its claim to lapse; a replica that
// reconnected after the same broker restart waits for it, then takes over and publishes every
// car.
func TestClusterRepublishTakenOverAfterClaimLapses(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	clk := c.b.clk.(*clocktest.Fake)
	cars := []string{"1HGCM82633A000001", "1HGCM82633A000002"}
	for _, car := range cars {
		c.addCar(t, car)
		_, pub := phoneKey(t)
		if _, err := c.a.Pair(context.Background(), "alice", "s", car, pub, "phone", "123456"); err != nil {
			t.Fatal(err)
		}
	}
	lostAt := clk.Now().Add(-time.Second)
	dead := republishClaim{Replica: "dead", StartedAtMs: clk.Now().UnixMilli(), ExpiresAtMs: clk.Now().Add(republishClaimTTL).UnixMilli()}
	b, _ := json.Marshal(dead)
	if err := c.st.Update(context.Background(), func(tx kv.Tx) error { return tx.Put(bucketRepublish, keyRepublish, b) }); err != nil {
		t.Fatal(err)
	}
	c.bus.mu.Lock()
	c.bus.msgs = nil
	c.bus.mu.Unlock()
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := c.b.RepublishAfterReconnect(context.Background(), "b", lostAt)
		done <- result{n, err}
	}()
	// b waits on the live claim; the claim lapses.
	testutil.EventuallyTrue(t, 30*time.Second, func() bool { return clk.Waiters() >= 1 })
	select {
	case r := <-done:
		t.Fatalf("returned while the dead replica's claim was live: %+v", r)
	default:
	}
	clk.Advance(republishClaimTTL)
	r := <-done
	if r.err != nil || r.n != len(cars) {
		t.Fatalf("took over: %d cars, %v; want %d", r.n, r.err, len(cars))
	}
	for _, car := range cars {
		if v := c.lastPublished(t, car); v == 0 {
			t.Errorf("%s: not republished", car)
		}
	}
	// The next replica of the same restart finds the republish done and skips.
	n, err := c.a.RepublishAfterReconnect(context.Background(), "a", lostAt)
	if err != nil || n != 0 {
		t.Fatalf("after a finished republish: %d cars, %v; want 0", n, err)
	}
	var claim republishClaim
	err = c.st.View(context.Background(), func(tx kv.Tx) error {
		v, err := tx.Get(bucketRepublish, keyRepublish)
		if err != nil || v == nil {
			return fmt.Errorf("no claim: %v", err)
		}
		return json.Unmarshal(v, &claim)
	})
	if err != nil || claim.Replica != "b" || claim.DoneAtMs == 0 {
		t.Fatalf("claim %+v, %v; want done by b", claim, err)
	}
}
