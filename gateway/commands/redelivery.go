package commands

import (
	"context"

	"telematics/gateway/kv"
	"telematics/gateway/store"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

// A replica hands a request or a car's result back to the broker until it is done with it,
// so that none is lost with a replica that dies (docs/CLUSTER-DESIGN.md, "Shared
// subscriptions"):
//   - its requests and results subscriptions acknowledge a message only once the handler has
//     returned (mqttc.AckAfterHandler), and the request handler returns only once the request
//     is decided (the decision durable in the store, the reply and the car's command sent);
//     the result handler once the result is relayed (or found to have no pending command);
//   - the broker (pkg/broker's SharedRedeliveryHook) gives what a leaving replica held
//     unacknowledged to another replica, with the MQTT DUP flag set;
//   - a redelivered request whose id is already decided in the store gets no answer here:
//     the replica that decided it has sent its reply, and an accepted command's pending
//     record gives it its one terminal reply (relayed result or the sweep's expired) from
//     whichever replica gets there first. Except a refusal the deciding replica recorded and
//     had not sent (it died between the two): its record is still there, and the replica
//     that claims it sends it (refusal.go), so the app has its answer with the redelivery.
//
// A redelivery is told by the DUP flag alone, not by identical bytes: a request sent again
// by a client (a replay, with or without the same bytes, and without DUP) keeps its
// duplicate refusal, as on one gateway. A client's own MQTT retransmission of a request
// (DUP set by its library) whose id is decided is the same request, which has its answer.

// ackAfterHandler reports whether the router's shared subscriptions are acknowledged only
// once handled: a replica's, on a client that can (paho). One gateway keeps acknowledging
// on queueing (its session is persistent and its requests are decided in order anyway).
func (r *Router) ackAfterHandler() (mqttc.AckAfterHandler, bool) {
	if !r.clustered() {
		return nil, false
	}
	a, ok := r.bus.(mqttc.AckAfterHandler)
	return a, ok
}

// subscribe registers h for filter, acknowledging after the handler when ackAfter is set and
// the router is a replica on a client that can.
func (r *Router) subscribe(ctx context.Context, filter string, qos byte, h mqttc.Handler, ackAfter bool) error {
	if a, ok := r.ackAfterHandler(); ok && ackAfter {
		return a.SubscribeAckAfterHandler(ctx, filter, qos, h)
	}
	if d, ok := r.bus.(mqttc.DirectSubscriber); ok && ackAfter {
		// Requests and results on the embedded broker: handled on the publishing client's
		// reader, one goroutine hand-off less each. Submit queues a request on its car's
		// shard (a full shard pushes back on that app, as the worker pool's queue did), and a
		// result's relay does not wait for the store.
		return d.SubscribeDirect(ctx, filter, qos, h)
	}
	return r.bus.Subscribe(ctx, filter, qos, h)
}

// onReplicaRequest is a replica's request handler: it returns once the request is decided,
// so its acknowledgement to the broker says so.
func (r *Router) onReplicaRequest(user string, m mqttc.Message) {
	<-r.submit(user, m.Origin, m.Payload, m.Duplicate)
}

// redeliveredAndDecided reports whether req is a broker redelivery (DUP) of a request whose id
// the cluster has already decided, in which case the replica answers nothing but a recorded
// refusal not sent yet, if it claims it. A store that cannot be read says no: the request is
// then decided as usual (and its recordDecision finds the id taken, errDecidedElsewhere, if
// it is).
func (r *Router) redeliveredAndDecided(req request, id string) bool {
	if !req.redelivered || !r.clustered() || !protocol.ValidID(id) {
		return false
	}
	nowMs := r.clock.Now().UnixMilli()
	var taken bool
	err := r.store.View(context.Background(), func(tx kv.Tx) error {
		var err error
		taken, err = store.CommandIDTaken(tx, id, nowMs)
		return err
	})
	if err != nil {
		r.log.Warn("redelivered request: decided ids unreadable; deciding it", "cmd_id", id, "err", err)
		return false
	}
	if taken && !r.sendRecordedRefusal(id, "redelivered") {
		r.log.Info("redelivered request already decided by another replica; its answer comes from there",
			"user", req.user, "cmd_id", id)
	}
	return taken
}
