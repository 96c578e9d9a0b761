package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"

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
	"telematics/pkg/vehicle/vehicletest"
)

// staticKeys is one car's whitelist and the key its grants are signed with.
type staticKeys struct {
	wl *protocol.Whitelist
	s  *sign.Signer
}

func (k staticKeys) Whitelist(string) *protocol.Whitelist { return k.wl }
func (k staticKeys) GrantSigner(string) *sign.Signer      { return k.s }

// clusterRig is two replicas' worth of parts: one embedded etcd, one mochi broker with real
// paho clients (the replicas', a car's and an app's), a car on a whitelist with alice's
// phone key, and one fake clock for both routers.
type clusterRig struct {
	t      *testing.T
	etcd   *etcdtest.Cluster
	broker *testutil.Mochi
	clk    *clocktest.Fake
	vin    string
	owner  *vehicletest.Phone
	keys   staticKeys

	mu      sync.Mutex
	replies map[string][]protocol.Reply // command id -> replies, in arrival order
	held    []string                    // command ids the car received and has not answered
	answer  bool                        // the car answers each command at once
	car     mqttc.Client
	app     mqttc.Client
}

func newClusterRig(t *testing.T) *clusterRig { return newClusterRigWith(t, nil) }

// newClusterRigWith is newClusterRig with beforeServe run on the broker before it serves (to
// add a hook that needs the server).
func newClusterRigWith(t *testing.T, beforeServe func(*mqtt.Server)) *clusterRig {
	gw, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	c := &clusterRig{
		t: t, etcd: etcdtest.Start(t), clk: clocktest.New(time.UnixMilli(1_800_000_000_000)),
		broker: testutil.StartMochi(t, testutil.MochiOptions{Hooks: []mqtt.Hook{new(auth.AllowHook)}, BeforeServe: beforeServe}),
		vin:    vehicletest.VIN, owner: vehicletest.NewPhone(t, "alice", protocol.RoleOwner, protocol.ChannelCloud),
		replies: map[string][]protocol.Reply{},
	}
	c.keys = staticKeys{wl: &protocol.Whitelist{V: protocol.Version, VIN: c.vin, Version: 1, Keys: []protocol.WhitelistKey{c.owner.Key}}, s: gw}
	st := c.store()
	if err := st.AddVehicles([]store.Vehicle{{VIN: c.vin, Users: map[string]protocol.Role{"alice": protocol.RoleOwner}}}); err != nil {
		t.Fatal(err)
	}
	c.app = c.dial("alice-app")
	if err := c.app.Subscribe(context.Background(), protocol.AppTopic("alice", protocol.SuffixReply), 1, func(m mqttc.Message) {
		var rep protocol.Reply
		if err := json.Unmarshal(m.Payload, &rep); err != nil {
			t.Errorf("reply %q: %v", m.Payload, err)
			return
		}
		c.mu.Lock()
		c.replies[rep.ID] = append(c.replies[rep.ID], rep)
		c.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	c.car = c.dial(c.vin)
	if err := c.car.Subscribe(context.Background(), protocol.VehicleTopic(c.vin, protocol.SuffixCmd), 1, func(m mqttc.Message) {
		var vc protocol.VehicleCommand
		var cmd protocol.Command
		err := json.Unmarshal(m.Payload, &vc)
		if err == nil {
			var doc []byte
			if doc, err = vc.Command.DocBytes(); err == nil {
				err = json.Unmarshal(doc, &cmd)
			}
		}
		if err != nil {
			t.Errorf("command to the car %q: %v", m.Payload, err)
			return
		}
		c.mu.Lock()
		answer := c.answer
		if !answer {
			c.held = append(c.held, cmd.ID)
		}
		c.mu.Unlock()
		if answer {
			c.result(cmd.ID)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *clusterRig) dial(id string) mqttc.Client {
	cl, err := mqttc.Dial(context.Background(), mqttc.Options{BrokerURL: c.broker.URL(), ClientID: id, CleanSession: true, Workers: 4})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// store is a new connection to the shared etcd, as each replica has its own, with a watched
// copy of every bucket, as a replica keeps of those its decisions read (etcdkv.Options.Cache):
// its Updates read what may be behind and must still decide on what is current.
func (c *clusterRig) store() *store.Store {
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: c.etcd.Endpoints(), Timeout: 20 * time.Second, Cache: []string{"*"}})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { s.Close() })
	st, err := store.OpenKV(s)
	if err != nil {
		c.t.Fatal(err)
	}
	return st
}

type replica struct {
	r   *Router
	bus mqttc.Client
	log *audit.Log
}

// replica starts a router named name on its own store connection and broker client.
func (c *clusterRig) replica(name string) *replica { return c.startReplica(name, nil) }

// startReplica is replica with the second factor f (nil: none).
func (c *clusterRig) startReplica(name string, f SecondFactor) *replica {
	st := c.store()
	lg, err := audit.Open(st.KV())
	if err != nil {
		c.t.Fatal(err)
	}
	bus := c.dial("gateway-" + name)
	cfg := DefaultConfig()
	cfg.Replica, cfg.Shards, cfg.RatePerMinute, cfg.ResultGrace = name, 4, 0, time.Second
	r, err := New(cfg, st, lg, bus, c.keys, f, c.clk, slog.New(slog.DiscardHandler))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { r.Close() })
	if err := r.Subscribe(context.Background()); err != nil {
		c.t.Fatal(err)
	}
	return &replica{r: r, bus: bus, log: lg}
}

// online tells every replica that the car is online (a plain subscription: each sees it).
func (c *clusterRig) online(rs ...*replica) {
	b, _ := json.Marshal(protocol.VehicleStatus{V: protocol.Version, Status: protocol.StatusOnline, TsMs: c.clk.Now().UnixMilli()})
	if err := c.car.Publish(context.Background(), protocol.VehicleTopic(c.vin, protocol.SuffixStatus), 1, true, b); err != nil {
		c.t.Fatal(err)
	}
	testutil.EventuallyTrue(c.t, 30*time.Second, func() bool {
		for _, r := range rs {
			if !r.r.twins.online(c.vin) {
				return false
			}
		}
		return true
	})
}

// request sends one signed command from alice's app and returns its id.
func (c *clusterRig) request() string {
	cmd := vehicletest.NewCommand(c.vin, protocol.ActionUnlock, c.clk.Now())
	b, _ := json.Marshal(protocol.AppRequest{V: protocol.Version, Command: c.owner.Sign(c.t, cmd)})
	if err := c.app.Publish(context.Background(), protocol.AppTopic("alice", protocol.SuffixCmd), 1, false, b); err != nil {
		c.t.Fatal(err)
	}
	return cmd.ID
}

// result is the car's "executed" for id.
func (c *clusterRig) result(id string) {
	b, _ := json.Marshal(protocol.Result{V: protocol.Version, ID: id, Status: protocol.ResultExecuted, TsMs: c.clk.Now().UnixMilli()})
	if err := c.car.Publish(context.Background(), protocol.VehicleTopic(c.vin, protocol.SuffixResult), 1, false, b); err != nil {
		c.t.Fatal(err)
	}
}

// terminal is the terminal replies to id so far.
func (c *clusterRig) terminal(id string) []protocol.Reply {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []protocol.Reply
	for _, rep := range c.replies[id] {
		if protocol.Terminal(rep.Status) {
			out = append(out, rep)
		}
	}
	return out
}

func (c *clusterRig) accepted(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(c.replies[id], func(r protocol.Reply) bool { return r.Status == protocol.ReplyAccepted })
}

// waitTerminal waits until each id has a terminal reply with status want.
func (c *clusterRig) waitTerminal(want string, ids ...string) {
	c.t.Helper()
	testutil.Eventually(c.t, 30*time.Second, func() error {
		for _, id := range ids {
			got := c.terminal(id)
			if len(got) == 0 {
				return fmt.Errorf("%s: no terminal reply yet", id)
			}
			if got[0].Status != want {
				return fmt.Errorf("%s: terminal reply %+v, want %s", id, got[0], want)
			}
		}
		return nil
	})
}

// checkOnce fails unless every id has exactly one terminal reply and at most one accepted.
func (c *clusterRig) checkOnce(ids []string) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		terminal, accepted := 0, 0
		for _, rep := range c.replies[id] {
			switch {
			case protocol.Terminal(rep.Status):
				terminal++
			case rep.Status == protocol.ReplyAccepted:
				accepted++
			}
		}
		if terminal != 1 || accepted > 1 {
			c.t.Errorf("%s: %d terminal and %d accepted replies, want 1 and at most 1: %+v", id, terminal, accepted, c.replies[id])
		}
	}
}

// pendingRecords is the store's pending bucket.
func (c *clusterRig) pendingRecords() map[string]pendingRecord {
	out := map[string]pendingRecord{}
	err := c.store().View(context.Background(), func(tx kv.Tx) error {
		return tx.Scan(bucketPending, nil, nil, func(k, v []byte) error {
			var rec pendingRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			out[string(k)] = rec
			return nil
		})
	})
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// expire moves the shared clock past every command's expiry plus the result grace, once both
// sweep tickers of every running router can fire.
func (c *clusterRig) expire() {
	c.clk.Advance(protocol.DefaultCommandLifetimeMs*time.Millisecond + 2*time.Second)
	c.clk.Advance(sweepInterval)
}

// Two replicas on one etcd and one broker: requests and results are shared among them, and
// every request gets exactly one terminal reply: when the car answers (whichever replica the
// result reaches), when both replicas' sweeps race to expire the same commands, and when the
// replica that accepted commands stops: the other relays the car's results for them and
// answers "expired" for the rest, once each.
func TestClusterExactlyOneTerminalReply(t *testing.T) {
	c := newClusterRig(t)
	a, b := c.replica("a"), c.replica("b")
	testutil.EventuallyTrue(t, 10*time.Second, func() bool { return c.clk.Waiters() >= 6 }) // both routers' tickers
	c.online(a, b)

	// 1. The car answers at once; requests and results go to either replica.
	c.mu.Lock()
	c.answer = true
	c.mu.Unlock()
	var answered []string
	for range 20 {
		answered = append(answered, c.request())
	}
	c.waitTerminal(protocol.ReplyExecuted, answered...)

	// 2. The car stays silent; both replicas' sweeps run on the same tick and race for the
	// same expired commands.
	c.mu.Lock()
	c.answer = false
	c.mu.Unlock()
	var raced []string
	for range 6 {
		raced = append(raced, c.request())
	}
	testutil.EventuallyTrue(t, 30*time.Second, func() bool { return len(c.pendingRecords()) == len(raced) })
	c.expire()
	c.waitTerminal(protocol.ReplyExpired, raced...)

	// 3. Commands pending at both replicas, then replica a stops (its pending commands stay in
	// the store). The car answers some of each replica's; b relays those and expires the rest.
	c.mu.Lock()
	c.held = nil
	c.mu.Unlock()
	var held []string
	testutil.Eventually(t, 60*time.Second, func() error {
		byA, byB := 0, 0
		for _, rec := range c.pendingRecords() {
			if rec.Replica == "a" {
				byA++
			} else {
				byB++
			}
		}
		if byA >= 2 && byB >= 1 {
			return nil
		}
		if len(held) >= 60 {
			t.Fatalf("60 requests and the broker gave replica a %d, replica b %d of them", byA, byB)
		}
		id := c.request()
		held = append(held, id)
		testutil.EventuallyTrue(t, 30*time.Second, func() bool { return c.accepted(id) })
		return fmt.Errorf("pending at a: %d, at b: %d", byA, byB)
	})
	recs := c.pendingRecords()
	if err := a.r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.bus.Close(); err != nil {
		t.Fatal(err)
	}
	// The broker has dropped a's shared subscriptions (a clean session): every message now
	// goes to b.
	testutil.EventuallyTrue(t, 30*time.Second, func() bool { _, ok := c.broker.Clients.Get("gateway-a"); return !ok })
	var relayed, ownAnswered, left []string
	for _, id := range held {
		rec, ok := recs[id]
		switch {
		case !ok:
			t.Fatalf("%s: no pending record", id)
		case rec.Replica == "a" && len(relayed) == 0:
			relayed = append(relayed, id)
		case rec.Replica == "b" && len(ownAnswered) == 0:
			ownAnswered = append(ownAnswered, id)
		default:
			left = append(left, id)
		}
	}
	for _, id := range slices.Concat(relayed, ownAnswered) {
		c.result(id)
	}
	c.waitTerminal(protocol.ReplyExecuted, slices.Concat(relayed, ownAnswered)...)
	c.expire()
	c.waitTerminal(protocol.ReplyExpired, left...)

	// Results that come after the expiry are late: audited, never a second reply.
	for _, id := range left {
		c.result(id)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		late, err := b.log.Query(audit.Filter{Kind: audit.KindLate, Limit: 100})
		if err != nil {
			return err
		}
		if len(late) < len(left) {
			return fmt.Errorf("%d late results audited, want %d", len(late), len(left))
		}
		return nil
	})
	c.checkOnce(slices.Concat(answered, raced, held))
	if recs := c.pendingRecords(); len(recs) != 0 {
		t.Errorf("pending records left: %v", recs)
	}
	if n := b.r.PendingCount(); n != 0 {
		t.Errorf("replica b still holds %d pending commands in memory", n)
	}
	t.Logf("%d answered, %d expired by racing sweeps, %d relayed from the stopped replica, %d expired by the survivor",
		len(answered), len(raced), len(relayed), len(left))
}
