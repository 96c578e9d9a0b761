package commands

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"telematics/internal/testutil"
	"telematics/pkg/broker"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/vehicletest"
)

// expiredRequest is alice's signed request for the rig's car, expired an hour ago, and its id.
func (c *clusterRig) expiredRequest() (string, []byte) {
	now := c.clk.Now().Add(-time.Hour)
	cmd := vehicletest.NewCommand(c.vin, protocol.ActionUnlock, now)
	b, err := json.Marshal(protocol.AppRequest{V: protocol.Version, Command: c.owner.Sign(c.t, cmd)})
	if err != nil {
		c.t.Fatal(err)
	}
	return cmd.ID, b
}

// settle makes sure that every reply each replica owes for the rig's car is out: a request
// for the same car, expired already (refused at once, nothing recorded), goes straight to
// each replica's handler, which decides it after that car's earlier requests; its replies go
// out in order, so once its refusal is in, every earlier reply of that replica is too.
func (c *clusterRig) settle(rs ...*replica) {
	c.t.Helper()
	for _, r := range rs {
		id, payload := c.expiredRequest()
		r.r.onAppRequest(mqttc.Message{Topic: protocol.AppTopic("alice", protocol.SuffixCmd), Payload: payload, QoS: 1})
		c.waitTerminal(protocol.ReplyRejected, id)
	}
}

// refusalRecords is the recorded refusals in the pending bucket, by command id.
func (c *clusterRig) refusalRecords() map[string]pendingRecord {
	out := map[string]pendingRecord{}
	for k, rec := range c.pendingRecords() {
		if id, ok := strings.CutPrefix(k, "refusal/"); ok && rec.Kind == kindRefusal {
			out[id] = rec
		}
	}
	return out
}

// checkRefused fails unless every id has exactly one terminal reply, a refusal with reason.
func (c *clusterRig) checkRefused(reason protocol.Reason, ids ...string) {
	c.t.Helper()
	c.checkOnce(ids)
	for _, id := range ids {
		if got := c.terminal(id); len(got) == 1 && (got[0].Status != protocol.ReplyRejected || got[0].Reason != reason) {
			c.t.Errorf("%s: terminal reply %+v, want rejected %s", id, got[0], reason)
		}
	}
	if recs := c.pendingRecords(); len(recs) != 0 {
		c.t.Errorf("pending records left: %v", recs)
	}
}

// stopHook sets r's hook between a recorded refusal's commit and its claim.
func stopHook(r *replica, hook func(id string) (stop bool)) { r.r.afterRefusalRecorded.Store(&hook) }

// A replica refuses a request durably (its id recorded) and dies before its refusal goes out,
// holding the request unacknowledged: the broker (pkg/broker's SharedRedeliveryHook) gives it
// to the other replica with DUP set, which finds the id decided and the refusal recorded, and
// sends that refusal, with its original reason, once. Without the record it would say nothing.
func TestClusterRefusalOfDeadReplicaSentOnRedelivery(t *testing.T) {
	c := newClusterRigWith(t, func(s *mqtt.Server) {
		if err := s.AddHook(broker.NewSharedRedeliveryHook(s, nil), nil); err != nil {
			t.Fatal(err)
		}
	})
	a := c.replica("a")
	reached, release := make(chan string, 1), make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // before a's router closes, should the test fail while a is held
	stopHook(a, func(id string) bool {
		reached <- id
		<-release // the test has killed a's connection by then
		return true
	})
	// The car is offline: a refuses vehicle_offline, records the refusal and stops there.
	id := c.request()
	select {
	case got := <-reached:
		if got != id {
			t.Fatalf("refusal recorded for %s, want %s", got, id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("replica a recorded no refusal")
	}
	if rec, ok := c.refusalRecords()[id]; !ok || rec.Reason != protocol.ReasonVehicleOffline || rec.User != "alice" || rec.Replica != "a" {
		t.Fatalf("recorded refusal %+v (found %v), want a's vehicle_offline for alice", rec, ok)
	}

	// b joins the group, and the car comes online: decided again, b would accept it.
	b := c.replica("b")
	c.online(b)
	// a dies: its client stops (no reconnect, its handler still blocked), and the broker
	// closes its connection, as a killed process's.
	closed := make(chan struct{})
	go func() {
		a.bus.Close()
		close(closed)
	}()
	testutil.EventuallyTrue(t, 30*time.Second, func() bool { return !a.bus.Connected() })
	cl, ok := c.broker.Clients.Get("gateway-a")
	if !ok {
		t.Fatal("replica a has no broker session")
	}
	cl.Stop(errors.New("replica killed"))

	c.waitTerminal(protocol.ReplyRejected, id)
	releaseOnce()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("replica a's client did not close")
	}
	c.settle(b)
	c.checkRefused(protocol.ReasonVehicleOffline, id)
}

// A replica that dies with recorded refusals not sent, and whose requests are not redelivered
// (it acknowledged them): the sweep of another replica sends each, once its record is older
// than refusalSweepAfter, and not before.
func TestClusterRecordedRefusalSweptWithoutRedelivery(t *testing.T) {
	c := newClusterRig(t)
	a := c.replica("a")
	stopHook(a, func(string) bool { return true })
	var ids []string
	for range 3 {
		ids = append(ids, c.request())
	}
	testutil.EventuallyTrue(t, 30*time.Second, func() bool { return len(c.refusalRecords()) == len(ids) })
	if err := a.r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.bus.Close(); err != nil {
		t.Fatal(err)
	}

	b := c.replica("b")
	testutil.EventuallyTrue(t, 10*time.Second, func() bool { return c.clk.Waiters() >= 3 }) // b's tickers
	c.clk.Advance(refusalSweepAfter - sweepInterval)
	b.r.SweepExpired()
	if n := len(c.refusalRecords()); n != len(ids) {
		t.Fatalf("%d of %d recorded refusals taken before refusalSweepAfter", len(ids)-n, len(ids))
	}
	c.clk.Advance(sweepInterval)
	c.clk.Advance(sweepInterval)
	c.waitTerminal(protocol.ReplyRejected, ids...)
	c.settle(b)
	c.checkRefused(protocol.ReasonVehicleOffline, ids...)
}

// Two replicas race for the same recorded refusals: both sweeps on the same tick, and the
// replica that refused against the one given the redelivered request at the same instant.
// Each request gets one refusal.
func TestClusterRecordedRefusalClaimedOnce(t *testing.T) {
	c := newClusterRig(t)
	a, b := c.replica("a"), c.replica("b")
	testutil.EventuallyTrue(t, 10*time.Second, func() bool { return c.clk.Waiters() >= 6 }) // both routers' tickers

	// 1. Refusals recorded and not sent, by either replica; then both sweeps race for them.
	never := func(string) bool { return true }
	stopHook(a, never)
	stopHook(b, never)
	var swept []string
	for range 6 {
		swept = append(swept, c.request())
	}
	testutil.EventuallyTrue(t, 30*time.Second, func() bool { return len(c.refusalRecords()) == len(swept) })
	c.clk.Advance(refusalSweepAfter)
	c.clk.Advance(sweepInterval)
	c.waitTerminal(protocol.ReplyRejected, swept...)
	c.settle(a, b) // their requests' hooks have run: the next hooks are part 2's

	// 2. The replica that refused claims its refusal while the other, given the request
	// again with DUP, claims it too.
	type stopped struct {
		by     *replica
		id     string
		resume chan bool
	}
	reached, done := make(chan stopped), make(chan struct{})
	t.Cleanup(func() { close(done) }) // before the routers close, should the test fail
	for _, r := range []*replica{a, b} {
		stopHook(r, func(id string) bool {
			resume := make(chan bool)
			select {
			case reached <- stopped{r, id, resume}:
			case <-done:
				return true
			}
			select {
			case stop := <-resume:
				return stop
			case <-done:
				return true
			}
		})
	}
	topic := protocol.AppTopic("alice", protocol.SuffixCmd)
	var raced []string
	for range 6 {
		payload, id := c.signedRequest()
		if err := c.app.Publish(context.Background(), topic, 1, false, payload); err != nil {
			t.Fatal(err)
		}
		var s stopped
		select {
		case s = <-reached:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no refusal recorded", id)
		}
		if s.id != id {
			t.Fatalf("refusal recorded for %s, want %s", s.id, id)
		}
		other := a
		if s.by == a {
			other = b
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			<-start
			other.r.onAppRequest(mqttc.Message{Topic: topic, Payload: payload, QoS: 1, Duplicate: true})
		})
		wg.Go(func() {
			<-start
			s.resume <- false
		})
		close(start)
		wg.Wait()
		raced = append(raced, id)
	}
	c.waitTerminal(protocol.ReplyRejected, raced...)
	c.settle(a, b)
	c.checkRefused(protocol.ReasonVehicleOffline, append(swept, raced...)...)
	t.Logf("%d refusals swept by racing sweeps, %d claimed by their replica against a redelivery", len(swept), len(raced))
}
