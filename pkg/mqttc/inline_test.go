package mqttc

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"telematics/internal/testutil"
)

func TestInlineRoundTrip(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	gw := NewInline(b.Server, InlineOptions{Logger: discard})
	defer gw.Close()
	ctx := context.Background()
	var atGateway inbox
	must(t, gw.Subscribe(ctx, "v/+/result", 1, atGateway.handle))
	if !gw.Connected() {
		t.Fatal("not connected")
	}

	car := dialTest(t, b.URL(), "car1", nil)
	must(t, car.Publish(ctx, "v/car1/result", 1, false, []byte("executed")))
	testutil.Eventually(t, 5*time.Second, func() error { return atGateway.has("v/car1/result", "executed") })
	if m := atGateway.all()[0]; m.Origin != "car1" || m.QoS != 1 {
		t.Fatalf("got %+v, want origin car1 at qos 1", m)
	}

	// In-process to in-process; the publisher's buffer is its own again after Publish.
	buf := []byte("from gateway")
	must(t, gw.Publish(ctx, "v/car2/result", 1, false, buf))
	copy(buf, "XXXXXXXXXXXX")
	testutil.Eventually(t, 5*time.Second, func() error { return atGateway.has("v/car2/result", "from gateway") })

	if err := gw.Publish(ctx, "v/+/cmd", 1, false, nil); !errors.Is(err, ErrInvalidTopic) {
		t.Fatalf("publish to a wildcard: %v", err)
	}
}

func TestInlineRetainedOnSubscribe(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	gw := NewInline(b.Server, InlineOptions{Logger: discard})
	defer gw.Close()
	ctx := context.Background()
	car := dialTest(t, b.URL(), "car1", nil)
	must(t, car.Publish(ctx, "v/car1/status", 1, true, []byte("online")))

	var status inbox
	must(t, gw.Subscribe(ctx, "v/+/status", 1, status.handle))
	testutil.Eventually(t, 5*time.Second, func() error { return status.has("v/car1/status", "online") })
	if m := status.all()[0]; !m.Retained {
		t.Fatalf("retained status delivered as %+v", m)
	}
}

// mochi keys inline subscriptions by identifier server-wide: overlapping filters, and two
// Inline clients on one server, must each get their message.
func TestInlineOverlappingSubscriptions(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	a := NewInline(b.Server, InlineOptions{Logger: discard})
	defer a.Close()
	c := NewInline(b.Server, InlineOptions{Logger: discard})
	defer c.Close()
	ctx := context.Background()
	var n1, n2, n3 atomic.Int32
	must(t, a.Subscribe(ctx, "v/#", 1, func(Message) { n1.Add(1) }))
	must(t, a.Subscribe(ctx, "v/+/telemetry", 0, func(Message) { n2.Add(1) }))
	must(t, c.Subscribe(ctx, "v/+/telemetry", 0, func(Message) { n3.Add(1) }))
	must(t, c.Publish(ctx, "v/car1/telemetry", 0, false, []byte("{}")))
	testutil.Eventually(t, 5*time.Second, func() error {
		if n1.Load() != 1 || n2.Load() != 1 || n3.Load() != 1 {
			return fmt.Errorf("deliveries %d %d %d, want 1 1 1", n1.Load(), n2.Load(), n3.Load())
		}
		return nil
	})
}

// A handler that publishes, in-process, to a topic its own client handles must not wait for
// its own full queue.
func TestInlineHandlerPublishesToItself(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	gw := NewInline(b.Server, InlineOptions{Workers: 1, QueueSize: 1, Logger: discard})
	defer gw.Close()
	ctx := context.Background()
	const n = 100
	var got atomic.Int32
	must(t, gw.Subscribe(ctx, "loop/out", 1, func(Message) { got.Add(1) }))
	must(t, gw.Subscribe(ctx, "loop/in", 1, func(Message) {
		for i := range n {
			if err := gw.Publish(ctx, "loop/out", 1, false, fmt.Appendf(nil, "%d", i)); err != nil {
				t.Error(err)
			}
		}
	}))
	must(t, gw.Publish(ctx, "loop/in", 1, false, nil))
	testutil.Eventually(t, 5*time.Second, func() error {
		if got.Load() != n {
			return fmt.Errorf("%d of %d", got.Load(), n)
		}
		return nil
	})
}

func TestInlineConnectedFollowsServer(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	gw := NewInline(b.Server, InlineOptions{Logger: discard})
	defer gw.Close()
	if !gw.Connected() {
		t.Fatal("not connected to a running server")
	}
	b.Stop()
	if gw.Connected() {
		t.Fatal("connected to a stopped server")
	}
	if err := gw.Publish(context.Background(), "a", 0, false, nil); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("publish to a stopped server: %v", err)
	}
}

func TestInlineWithoutInlineClient(t *testing.T) {
	t.Parallel()
	srv := mqtt.New(&mqtt.Options{Logger: discard})
	c := NewInline(srv, InlineOptions{Logger: discard})
	defer c.Close()
	if err := c.Publish(context.Background(), "a", 0, false, nil); !errors.Is(err, mqtt.ErrInlineClientNotEnabled) {
		t.Fatalf("got %v", err)
	}
}

func TestInlineCloseIdempotentNoLeak(t *testing.T) {
	b := startBroker(t, brokerConfig{})
	check := goroutineBaseline(t)
	ctx := context.Background()
	gw := NewInline(b.Server, InlineOptions{Workers: 4, Logger: discard})
	var got atomic.Int32
	must(t, gw.Subscribe(ctx, "v/+/result", 1, func(Message) { got.Add(1) }))
	must(t, gw.Publish(ctx, "v/car1/result", 1, false, nil))
	must(t, gw.Close())
	must(t, gw.Close())
	if got.Load() != 1 {
		t.Fatalf("the queued message was not handled before Close returned: %d", got.Load())
	}
	if gw.Connected() {
		t.Fatal("connected after Close")
	}
	for _, err := range []error{
		gw.Publish(ctx, "v/car1/result", 1, false, nil),
		gw.Subscribe(ctx, "v/+/result", 1, func(Message) {}),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("after Close: %v", err)
		}
	}
	// Unsubscribed: another client's publication no longer reaches the closed handler.
	other := NewInline(b.Server, InlineOptions{Logger: discard})
	must(t, other.Publish(ctx, "v/car1/result", 1, false, nil))
	must(t, other.Close())
	if got.Load() != 1 {
		t.Fatal("a closed client still handles messages")
	}
	check()
}

// A direct subscription's handler runs on the delivering goroutine: a car's messages arrive
// in the order it sent them, a handler may publish in-process (here to another direct
// subscription, which then runs nested), and after Close nothing is handled.
func TestInlineSubscribeDirect(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	gw := NewInline(b.Server, InlineOptions{Logger: discard})
	ctx := context.Background()
	var results, replies inbox
	must(t, gw.SubscribeDirect(ctx, "app/+/reply", 1, replies.handle))
	must(t, gw.SubscribeDirect(ctx, "v/+/result", 1, func(m Message) {
		results.handle(m)
		if err := gw.Publish(ctx, "app/alice/reply", 1, false, m.Payload); err != nil {
			t.Error(err)
		}
	}))
	car := dialTest(t, b.URL(), "car1", nil)
	const n = 50
	for i := range n {
		must(t, car.Publish(ctx, "v/car1/result", 1, false, fmt.Appendf(nil, "%d", i)))
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if got := len(replies.all()); got != n {
			return fmt.Errorf("%d of %d replies", got, n)
		}
		return nil
	})
	for i, m := range results.all() {
		if string(m.Payload) != fmt.Sprint(i) || m.Origin != "car1" {
			t.Fatalf("result %d: %+v", i, m)
		}
	}
	must(t, gw.Close())
	_ = car.Publish(ctx, "v/car1/result", 1, false, []byte("after close"))
	must(t, car.Publish(ctx, "v/car1/sync", 1, false, nil)) // the broker has handled the one before
	if got := len(results.all()); got != n {
		t.Fatalf("%d results handled, %d after Close", got, got-n)
	}
}
