package mqttc

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// InlineOptions configure an Inline client. Zero values take the defaults given per field.
type InlineOptions struct {
	// Workers is the number of handler goroutines (default GOMAXPROCS); QueueSize the capacity
	// of each one's queue (default 1024).
	Workers   int
	QueueSize int
	// Logger receives handler panics; default discards.
	Logger *slog.Logger
}

// Inline is a Client for the broker embedded in this process, through mochi's inline client
// (the server must be created with Options.InlineClient = true). There is no loopback TCP and
// no per-client write queue that mochi could overflow and drop from: a delivery is a function
// call.
//
// mochi calls the subscription handler synchronously on the publishing client's reader
// goroutine, after it has sent that client its PUBACK. So the handler only puts the message
// into the topic's bounded queue and returns; when the queue is full it blocks that reader, and
// so that one publisher, until a worker has made room. Nothing is dropped. A message published
// in-process (Publish of any Inline on the same server) never blocks on a full queue, because
// its publisher may be one of our own workers, which would then wait for itself; in-process
// publishers are bounded by their own input.
type Inline struct {
	srv  *mqtt.Server
	disp *dispatcher
	log  *slog.Logger
	stop *stopWatch

	mu     sync.Mutex
	closed bool
	subs   map[string]int // filter → mochi subscription identifier
	once   sync.Once
}

var _ Client = (*Inline)(nil)

// inlineSubIDs allocates mochi inline subscription identifiers. mochi keys inline subscriptions
// by identifier across the whole server (two subscriptions with one identifier overwrite each
// other, even for different filters), and several Inline clients may share a server, so the
// identifiers come from one process-wide counter: unique without any coordination.
var inlineSubIDs atomic.Int64

// NewInline returns a client that publishes and subscribes through srv's inline client. If
// srv was created without Options.InlineClient, every call returns mochi's
// ErrInlineClientNotEnabled.
func NewInline(srv *mqtt.Server, o InlineOptions) *Inline {
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 1024
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	i := &Inline{
		srv:  srv,
		disp: newDispatcher(o.Workers, o.QueueSize, o.Logger),
		log:  o.Logger,
		stop: &stopWatch{},
		subs: make(map[string]int),
	}
	if err := srv.AddHook(i.stop, nil); err != nil {
		// Cannot happen (the hook's Init accepts anything); without it Connected stays true
		// after the server stopped.
		o.Logger.Error("mqttc inline: watch server stop", "error", err)
	}
	return i
}

// Publish publishes into the broker: when it returns, inline subscribers (ours included) have
// the message queued and network subscribers have it in their write queues (mochi drops it for
// a network subscriber whose write queue is full). qos is the QoS the subscribers receive. It
// does not wait for handlers: an in-process publication may exceed a full queue. The payload
// must not be modified until Publish returns; a retained message keeps it.
func (i *Inline) Publish(ctx context.Context, topic string, qos byte, retain bool, payload []byte) error {
	if err := i.usable(); err != nil {
		return err
	}
	if !validTopic(topic) || qos > 2 {
		return fmt.Errorf("publish %q qos %d: %w", topic, qos, ErrInvalidTopic)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := i.srv.Publish(topic, payload, retain, qos); err != nil {
		return fmt.Errorf("publish %q: %w", topic, err)
	}
	return nil
}

// Subscribe registers h for filter; subscribing to the same filter again replaces the handler.
// Retained messages that match are queued before Subscribe returns. The qos caps the QoS
// reported in Message.QoS; Message.Retained is the publisher's retain flag.
func (i *Inline) Subscribe(ctx context.Context, filter string, qos byte, h Handler) error {
	return i.subscribe(ctx, filter, qos, h, false)
}

// SubscribeDirect is Subscribe with h called on the goroutine that delivers the message, as
// DirectSubscriber says: mochi's reader goroutine of the publishing client (after its PUBACK),
// or the caller of an in-process Publish. No worker, no queue: h must return quickly and must
// not wait for anything another delivery of this subscription would have to do.
func (i *Inline) SubscribeDirect(ctx context.Context, filter string, qos byte, h Handler) error {
	return i.subscribe(ctx, filter, qos, h, true)
}

func (i *Inline) subscribe(ctx context.Context, filter string, qos byte, h Handler, direct bool) error {
	if !validFilter(filter) || qos > 2 || h == nil {
		return fmt.Errorf("subscribe %q qos %d: %w", filter, qos, ErrInvalidTopic)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	i.mu.Lock()
	if i.closed {
		i.mu.Unlock()
		return ErrClosed
	}
	id, ok := i.subs[filter]
	if !ok {
		id = int(inlineSubIDs.Add(1))
		i.subs[filter] = id
	}
	i.mu.Unlock()

	fn := func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		m := Message{
			Topic: pk.TopicName,
			// A copy: an in-process publisher owns its buffer again once Publish returns.
			Payload:  bytes.Clone(pk.Payload),
			QoS:      min(pk.FixedHeader.Qos, qos),
			Retained: pk.FixedHeader.Retain,
			Origin:   pk.Origin, // the publishing client's id; "inline" for in-process
		}
		if direct {
			if i.usable() == nil { // closed: the message belongs to nobody, as below
				h(m)
			}
			return
		}
		// Fails only once closed; the message then belongs to nobody, as with any client
		// that has gone away.
		_ = i.disp.dispatch(h, m, pk.Origin == mqtt.InlineClientId)
	}
	// Same identifier for the same filter: mochi replaces the handler in place, no gap.
	if err := i.srv.Subscribe(filter, id, fn); err != nil {
		i.mu.Lock()
		if !ok && i.subs[filter] == id {
			delete(i.subs, filter)
		}
		i.mu.Unlock()
		return fmt.Errorf("subscribe %q: %w", filter, err)
	}
	i.mu.Lock()
	closed := i.closed
	i.mu.Unlock()
	if closed { // Close ran meanwhile and may have missed this subscription
		_ = i.srv.Unsubscribe(filter, id)
		return ErrClosed
	}
	return nil
}

func (i *Inline) usable() error {
	i.mu.Lock()
	closed := i.closed
	i.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case i.stop.stopped.Load():
		return ErrNotConnected
	}
	return nil
}

// Connected reports whether the client is open and the server has not been closed.
func (i *Inline) Connected() bool { return i.usable() == nil }

// Close removes the subscriptions, lets the workers handle what is queued and waits for them.
// Publishers blocked on a full queue are released (their message is not handled). It is
// idempotent and must not be called from a Handler.
func (i *Inline) Close() error {
	i.once.Do(func() {
		i.mu.Lock()
		i.closed = true
		subs := i.subs
		i.subs = nil
		i.mu.Unlock()
		for filter, id := range subs {
			_ = i.srv.Unsubscribe(filter, id)
		}
		i.disp.close()
	})
	return nil
}

// stopWatch is a mochi hook that only records that the server stopped. It provides nothing
// else, in particular no authentication: it admits nobody.
type stopWatch struct {
	mqtt.HookBase
	stopped atomic.Bool
}

func (h *stopWatch) ID() string { return "mqttc-inline-stop-watch" }

func (h *stopWatch) Provides(b byte) bool { return b == mqtt.OnStopped }

func (h *stopWatch) OnStopped() { h.stopped.Store(true) }
