package mqttc

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"telematics/internal/testutil"
)

// benchTopics are the topics a benchmark cycles through (one per car).
func benchTopics(n int) []string {
	topics := make([]string, n)
	for i := range topics {
		topics[i] = fmt.Sprintf("v/VIN%014d/telemetry", i)
	}
	return topics
}

// The dispatcher alone: queueing, the hand-over to a worker, the handler call.
func BenchmarkDispatch(b *testing.B) {
	for _, workers := range []int{1, 4} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			d := newDispatcher(workers, 1024, discard)
			topics := benchTopics(64)
			payload := make([]byte, 200)
			var handled atomic.Int64
			h := func(Message) { handled.Add(1) }
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			i := 0
			for b.Loop() {
				if err := d.dispatch(h, Message{Topic: topics[i%len(topics)], Payload: payload}, false); err != nil {
					b.Fatal(err)
				}
				i++
			}
			d.close()
			if handled.Load() != int64(i) {
				b.Fatalf("handled %d of %d", handled.Load(), i)
			}
		})
	}
}

// The embedded path: Inline.Publish → mochi → our inline handler → queue → worker.
func BenchmarkInlinePublish(b *testing.B) {
	for _, size := range []int{200, 2048} {
		b.Run(fmt.Sprintf("bytes=%d", size), func(b *testing.B) {
			srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: discard})
			c := NewInline(srv, InlineOptions{Workers: 2, Logger: discard})
			var handled atomic.Int64
			ctx := context.Background()
			if err := c.Subscribe(ctx, "v/+/telemetry", 1, func(Message) { handled.Add(1) }); err != nil {
				b.Fatal(err)
			}
			topics := benchTopics(64)
			payload := make([]byte, size)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			i := 0
			for b.Loop() {
				if err := c.Publish(ctx, topics[i%len(topics)], 1, false, payload); err != nil {
					b.Fatal(err)
				}
				i++
			}
			testutil.Eventually(b, 10*time.Second, func() error {
				if n := handled.Load(); n != int64(i) {
					return fmt.Errorf("handled %d of %d", n, i)
				}
				return nil
			})
			_ = c.Close()
		})
	}
}
