package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/vehicletest"
)

// signedRequest is alice's signed request for the rig's car, and its command id.
func (c *clusterRig) signedRequest() ([]byte, string) {
	cmd := vehicletest.NewCommand(c.vin, protocol.ActionUnlock, c.clk.Now())
	b, _ := json.Marshal(protocol.AppRequest{V: protocol.Version, Command: c.owner.Sign(c.t, cmd)})
	return b, cmd.ID
}

// turns is the store's turn queues: command ids in the car's order.
func (c *clusterRig) turns() []string {
	var ids []string
	err := c.store().View(context.Background(), func(tx kv.Tx) error {
		ids = ids[:0]
		return tx.Scan(bucketTurns, nil, nil, func(_, v []byte) error {
			var q turnQueue
			if err := json.Unmarshal(v, &q); err != nil {
				return err
			}
			for _, t := range q.Turns {
				ids = append(ids, t.ID)
			}
			return nil
		})
	})
	if err != nil {
		c.t.Fatal(err)
	}
	return ids
}

// waitTurns waits until the car's turns are want, in order.
func (c *clusterRig) waitTurns(want ...string) {
	c.t.Helper()
	testutil.Eventually(c.t, 30*time.Second, func() error {
		if got := c.turns(); !slices.Equal(got, want) {
			return fmt.Errorf("turns %v, want %v", got, want)
		}
		return nil
	})
}

// waitAccepted waits until each id's "accepted" reply reached the app (the broker delivers
// it after the decision is done).
func (c *clusterRig) waitAccepted(ids ...string) {
	c.t.Helper()
	testutil.Eventually(c.t, 30*time.Second, func() error {
		for _, id := range ids {
			if !c.accepted(id) {
				return fmt.Errorf("%s not accepted (yet)", id)
			}
		}
		return nil
	})
}

// heldCommands is what the (silent) car received, in order.
func (c *clusterRig) heldCommands() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.held)
}

// Requests for one car that arrive on two replicas are decided in the order the cluster
// accepted them (took their turns in etcd), one at a time: while replica a holds the car's
// turn (in the middle of a decision), a request on b and a later one on a wait; once a gives
// the turn back they reach the car in acceptance order. The turn of a replica that dies
// mid-decision holds the car up only until its command's expiry, and the sweep deletes it.
func TestClusterCarOrder(t *testing.T) {
	c := newClusterRig(t)
	a, b := c.replica("a"), c.replica("b")
	testutil.EventuallyTrue(t, 10*time.Second, func() bool { return c.clk.Waiters() >= 6 }) // both routers' tickers
	c.online(a, b)

	// 1. a is deciding a command for the car.
	held, err := a.r.takeTurn(c.vin, "deciding-on-a", c.clk.Now().Add(20*time.Second).UnixMilli())
	if err != nil {
		t.Fatal(err)
	}
	req1, id1 := c.signedRequest()
	done1 := b.r.Submit("alice", "", req1)
	c.waitTurns("deciding-on-a", id1)
	req2, id2 := c.signedRequest()
	done2 := a.r.Submit("alice", "", req2)
	c.waitTurns("deciding-on-a", id1, id2)
	// Accepted by the cluster, not decided: neither was answered nor sent.
	c.mu.Lock()
	answered := len(c.replies[id1]) + len(c.replies[id2])
	c.mu.Unlock()
	if answered != 0 || len(c.heldCommands()) != 0 {
		t.Fatalf("decided before the car's earlier command: replies %d, sent %v", answered, c.heldCommands())
	}
	req3, id3 := c.signedRequest()
	done3 := b.r.Submit("alice", "", req3) // behind id1 on b's shard, so after id2 in the car's order

	a.r.releaseTurn(c.vin, held)
	for _, d := range []<-chan struct{}{done1, done2, done3} {
		<-d
	}
	testutil.EventuallyTrue(t, 30*time.Second, func() bool { return len(c.heldCommands()) >= 3 })
	if got, want := c.heldCommands(), []string{id1, id2, id3}; !slices.Equal(got, want) {
		t.Fatalf("the car received %v, want acceptance order %v", got, want)
	}
	c.waitAccepted(id1, id2, id3)
	c.waitTurns() // every turn given back

	// 2. a died holding the car's turn for a command that expires in 3 s: b's request waits
	// until then, then is decided; the sweep removes the dead turn.
	if _, err := a.r.takeTurn(c.vin, "dead-on-a", c.clk.Now().Add(3*time.Second).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	req4, id4 := c.signedRequest()
	done4 := b.r.Submit("alice", "", req4)
	c.waitTurns("dead-on-a", id4)
	if c.accepted(id4) {
		t.Fatal("decided while an earlier turn was live")
	}
	c.clk.Advance(3 * time.Second)
	<-done4
	c.waitAccepted(id4)
	testutil.EventuallyTrue(t, 30*time.Second, func() bool { return slices.Contains(c.heldCommands(), id4) })
	c.expire()
	c.waitTurns()
	c.waitTerminal(protocol.ReplyExpired, id1, id2, id3, id4)
	c.checkOnce([]string{id1, id2, id3, id4})
}

// Requests for one car sent at once to both replicas: each is decided in its turn, so the car
// receives the commands in the order their accepted decisions were recorded (the audit log's
// order), and no turn is left behind.
func TestClusterCarOrderUnderLoad(t *testing.T) {
	c := newClusterRig(t)
	a, b := c.replica("a"), c.replica("b")
	testutil.EventuallyTrue(t, 10*time.Second, func() bool { return c.clk.Waiters() >= 6 })
	c.online(a, b)
	const perReplica = 6
	var ids []string
	var dones []<-chan struct{}
	for range perReplica {
		for _, r := range []*replica{a, b} {
			req, id := c.signedRequest()
			ids = append(ids, id)
			dones = append(dones, r.r.Submit("alice", "", req))
		}
	}
	for _, d := range dones {
		<-d
	}
	c.waitAccepted(ids...)
	testutil.EventuallyTrue(t, 30*time.Second, func() bool { return len(c.heldCommands()) == len(ids) })
	evs, err := a.log.Query(audit.Filter{Kind: audit.KindCommand, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var decided []string // oldest first
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Outcome == protocol.ReplyAccepted {
			decided = append(decided, evs[i].CmdID)
		}
	}
	if got := c.heldCommands(); !slices.Equal(got, decided) {
		t.Fatalf("the car received\n%v\nthe decisions were recorded\n%v", got, decided)
	}
	c.waitTurns()
}

// A car's queue of turns is bounded: with maxTurnsPerCar live turns (commands of one car
// waiting their turn on the replicas), a further request for it is refused rate_limited, and
// it is taken again once turns expire.
func TestClusterCarQueueBounded(t *testing.T) {
	c := newClusterRig(t)
	a := c.replica("a")
	c.online(a)
	until := c.clk.Now().Add(20 * time.Second).UnixMilli()
	for i := range maxTurnsPerCar {
		if _, err := a.r.takeTurn(c.vin, fmt.Sprintf("waiting-%d", i), until); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.r.takeTurn(c.vin, "one-too-many", until); protocol.ReasonOf(err) != protocol.ReasonRateLimited {
		t.Fatalf("turn beyond the bound: %v, want a rate_limited refusal", err)
	}
	id := c.request()
	c.waitTerminal(protocol.ReplyRejected, id)
	if got := c.terminal(id)[0].Reason; got != protocol.ReasonRateLimited {
		t.Fatalf("request for a car with a full queue: %s, want %s", got, protocol.ReasonRateLimited)
	}
	// Past their expiry the waiting turns no longer count, and the next write drops them.
	c.clk.Advance(21 * time.Second)
	if _, err := a.r.takeTurn(c.vin, "after-expiry", c.clk.Now().Add(20*time.Second).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	c.waitTurns("after-expiry")
}
