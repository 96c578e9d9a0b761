// Package mqttc is the one small MQTT client interface every part of the system uses, with two
// implementations: a paho client for a broker over the network (cars, phones, a gateway in
// front of a foreign broker) and mochi's inline client for the gateway's embedded broker (no
// loopback TCP and no write queue that could drop a delivery).
package mqttc

import "context"

// Message is one received publication.
type Message struct {
	Topic    string
	Payload  []byte
	QoS      byte
	Retained bool
	// Origin is the publishing client's id where the broker tells it (mochi's inline client
	// does); empty otherwise.
	Origin string
	// Duplicate is the MQTT DUP flag: the broker (or the publisher) sent this message before,
	// to this client or, after a shared-subscription member left, to another one.
	Duplicate bool
}

// Handler receives messages. Handlers for one topic are called in order, one at a time;
// handlers of different topics may run in parallel. A handler must not block for long: a slow
// handler pushes back on the broker (and so on the publishers) rather than losing messages.
type Handler func(Message)

// AckAfterHandler is implemented by a client that can acknowledge a subscription's QoS 1
// messages only once their handler has returned (the paho client), instead of once they are
// queued for it. A message whose handler had not returned when the connection ended is then
// still the broker's to deliver again (a shared subscription's other member gets it when this
// one leaves). Per-topic order and the worker pool are those of Subscribe; a handler that
// blocks holds its worker, so such a client wants more workers.
type AckAfterHandler interface {
	SubscribeAckAfterHandler(ctx context.Context, filter string, qos byte, h Handler) error
}

// DirectSubscriber is implemented by a client that can call a subscription's handler on the
// goroutine that delivers the message (the embedded broker's inline client: the publishing
// client's reader), without the worker pool of Subscribe: one goroutine hand-off less per
// message. Messages of one publisher are handled in order, those of different publishers at
// once; a handler that blocks holds up its publisher, which is the backpressure.
type DirectSubscriber interface {
	SubscribeDirect(ctx context.Context, filter string, qos byte, h Handler) error
}

// Client publishes and subscribes.
type Client interface {
	// Publish sends a message. With qos 1 it returns once the broker acknowledged it, ctx
	// ended, or the client gave up; a message is never reported sent when it was not.
	Publish(ctx context.Context, topic string, qos byte, retain bool, payload []byte) error
	// Subscribe registers h for filter. Subscriptions are remembered and made again after every
	// reconnect.
	Subscribe(ctx context.Context, filter string, qos byte, h Handler) error
	// Connected reports whether the client currently has a session with the broker.
	Connected() bool
	// Close disconnects and stops every goroutine the client started. It is idempotent.
	Close() error
}
