package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"telematics/internal/testutil"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/vehicletest"
)

// A request that replica a decided and that the broker hands to replica b again (DUP, as
// when a dies before acknowledging it) gets no answer from b; the car's result, relayed by
// whichever replica gets it, is its one terminal reply. The same request sent again by the
// app (no DUP) is refused duplicate, as on one gateway.
func TestClusterRedeliveredDecidedRequestIsNotAnswered(t *testing.T) {
	c := newClusterRig(t)
	a := c.replica("a")
	c.online(a)

	cmd := vehicletest.NewCommand(c.vin, protocol.ActionUnlock, c.clk.Now())
	payload, _ := json.Marshal(protocol.AppRequest{V: protocol.Version, Command: c.owner.Sign(t, cmd)})
	topic := protocol.AppTopic("alice", protocol.SuffixCmd)
	if err := c.app.Publish(context.Background(), topic, 1, false, payload); err != nil {
		t.Fatal(err)
	}
	testutil.EventuallyTrue(t, 30*time.Second, func() bool { return c.accepted(cmd.ID) })

	b := c.replica("b")
	c.online(b)
	// The broker's redelivery, straight to b's handler: it returns once b is done with it.
	b.r.onAppRequest(mqttc.Message{Topic: topic, Payload: payload, QoS: 1, Duplicate: true})
	// The app's own replay, also to b: refused. b's replies go out in order, so once the
	// refusal is in, a reply to the redelivery would be too.
	b.r.onAppRequest(mqttc.Message{Topic: topic, Payload: payload, QoS: 1})
	count := func(status string, reason protocol.Reason) int {
		c.mu.Lock()
		defer c.mu.Unlock()
		n := 0
		for _, rep := range c.replies[cmd.ID] {
			if rep.Status == status && rep.Reason == reason {
				n++
			}
		}
		return n
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		if n := count(protocol.ReplyRejected, protocol.ReasonDuplicate); n != 1 {
			return fmt.Errorf("%d duplicate refusals, want 1 (the replay's)", n)
		}
		return nil
	})

	c.result(cmd.ID)
	testutil.Eventually(t, 30*time.Second, func() error {
		if n := count(protocol.ReplyExecuted, protocol.ReasonNone); n != 1 {
			return fmt.Errorf("%d executed replies, want 1", n)
		}
		return nil
	})
	c.mu.Lock()
	replies := c.replies[cmd.ID]
	c.mu.Unlock()
	if len(replies) != 3 {
		t.Fatalf("replies %+v, want accepted, the replay's duplicate and executed", replies)
	}
}

// A redelivered request that no replica has decided yet (its replica died before deciding)
// is decided as any other.
func TestClusterRedeliveredUndecidedRequestIsDecided(t *testing.T) {
	c := newClusterRig(t)
	b := c.replica("b")
	c.online(b)
	c.mu.Lock()
	c.answer = true
	c.mu.Unlock()
	cmd := vehicletest.NewCommand(c.vin, protocol.ActionUnlock, c.clk.Now())
	payload, _ := json.Marshal(protocol.AppRequest{V: protocol.Version, Command: c.owner.Sign(t, cmd)})
	b.r.onAppRequest(mqttc.Message{Topic: protocol.AppTopic("alice", protocol.SuffixCmd), Payload: payload, QoS: 1, Duplicate: true})
	c.waitTerminal(protocol.ReplyExecuted, cmd.ID)
	c.checkOnce([]string{cmd.ID})
}
