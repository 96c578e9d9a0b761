package mqttc

import (
	"context"
	"fmt"
	"testing"
	"time"

	"telematics/internal/testutil"
)

// brokerInflight is how many QoS 1 messages the broker has sent to id and not had
// acknowledged.
func brokerInflight(b *testBroker, id string) (int, error) {
	cl, ok := b.Clients.Get(id)
	if !ok {
		return 0, fmt.Errorf("no client %s at the broker", id)
	}
	return cl.State.Inflight.Len(), nil
}

// A subscription made with SubscribeAckAfterHandler leaves each message unacknowledged at the
// broker until its handler has returned; Subscribe's messages are acknowledged once queued.
// Order per topic holds either way.
func TestPahoAckAfterHandler(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	gw := NewInline(b.Server, InlineOptions{Logger: discard})
	defer gw.Close()
	ctx := context.Background()

	release := make(chan struct{})
	var got inbox
	c := dialTest(t, b.URL(), "replica1", func(o *Options) { o.Workers = 4 })
	must(t, c.SubscribeAckAfterHandler(ctx, "app/+/cmd", 1, func(m Message) {
		got.handle(m)
		<-release
	}))
	var early inbox
	must(t, c.Subscribe(ctx, "v/+/result", 1, func(m Message) {
		early.handle(m)
		<-release
	}))

	const n = 3
	for i := range n {
		must(t, gw.Publish(ctx, "app/u1/cmd", 1, false, fmt.Appendf(nil, "req %d", i)))
	}
	must(t, gw.Publish(ctx, "v/car1/result", 1, false, []byte("res")))
	// The first request is in its handler, the other two queued behind it on their topic's
	// worker; the result is in its handler too, but was acknowledged when queued.
	testutil.Eventually(t, 5*time.Second, func() error {
		if len(got.all()) != 1 || len(early.all()) != 1 {
			return fmt.Errorf("%d requests and %d results in handlers", len(got.all()), len(early.all()))
		}
		k, err := brokerInflight(b, "replica1")
		if err != nil || k != n {
			return fmt.Errorf("broker holds %d unacknowledged (%v), want the %d requests", k, err, n)
		}
		return nil
	})
	close(release)
	testutil.Eventually(t, 5*time.Second, func() error {
		k, err := brokerInflight(b, "replica1")
		if err != nil || k != 0 {
			return fmt.Errorf("broker holds %d unacknowledged (%v)", k, err)
		}
		return nil
	})
	for i, m := range got.all() {
		if want := fmt.Sprintf("req %d", i); string(m.Payload) != want || m.Duplicate {
			t.Fatalf("message %d: %q dup %v, want %q", i, m.Payload, m.Duplicate, want)
		}
	}
}
