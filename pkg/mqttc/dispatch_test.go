package mqttc

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"telematics/internal/testutil"
)

func TestDispatcherKeepsPerTopicOrder(t *testing.T) {
	check := goroutineBaseline(t)
	d := newDispatcher(4, 2, discard) // tiny queues: dispatchers block often
	const topics, perTopic = 8, 500
	var mu sync.Mutex
	last := map[string]int{}
	var errs []error
	var handled atomic.Int64
	h := func(m Message) {
		var n int
		fmt.Sscan(string(m.Payload), &n)
		mu.Lock()
		if want := last[m.Topic] + 1; n != want {
			errs = append(errs, fmt.Errorf("%s: got %d, want %d", m.Topic, n, want))
		}
		last[m.Topic] = n
		mu.Unlock()
		handled.Add(1)
	}
	var wg sync.WaitGroup
	for i := range topics {
		wg.Go(func() {
			topic := fmt.Sprintf("v/%d/telemetry", i)
			for n := 1; n <= perTopic; n++ {
				if err := d.dispatch(h, Message{Topic: topic, Payload: fmt.Appendf(nil, "%d", n)}, false); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	d.close() // drains
	if got := handled.Load(); got != topics*perTopic {
		t.Fatalf("handled %d, want %d", got, topics*perTopic)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	check()
}

// A full queue blocks the caller; nothing is dropped; the caller resumes when a worker makes
// room.
func TestDispatcherFullQueueBlocks(t *testing.T) {
	t.Parallel()
	d := newDispatcher(1, 1, discard)
	defer d.close()
	release := make(chan struct{})
	var handled atomic.Int64
	h := func(Message) { <-release; handled.Add(1) }
	m := Message{Topic: "a"}

	must(t, d.dispatch(h, m, false)) // taken by the worker, which blocks
	waitTaken(t, d)
	must(t, d.dispatch(h, m, false)) // fills the queue
	third := make(chan error, 1)
	go func() { third <- d.dispatch(h, m, false) }()
	testutil.Eventually(t, 2*time.Second, func() error { return blockedOn(d, 0, 1) })
	select {
	case err := <-third:
		t.Fatalf("dispatch into a full queue returned %v; want it to block", err)
	default:
	}
	close(release)
	must(t, <-third)
	testutil.Eventually(t, 2*time.Second, func() error {
		if n := handled.Load(); n != 3 {
			return fmt.Errorf("handled %d of 3", n)
		}
		return nil
	})
}

// Callers blocked on a full queue are served in the order they came: a freed slot goes to the
// first in line, never to a caller that arrives later.
func TestDispatcherServesBlockedCallersInOrder(t *testing.T) {
	t.Parallel()
	d := newDispatcher(1, 1, discard)
	defer d.close()
	release := make(chan struct{})
	var mu sync.Mutex
	var order []string
	h := func(m Message) {
		<-release
		mu.Lock()
		order = append(order, string(m.Payload))
		mu.Unlock()
	}
	send := func(p string) error { return d.dispatch(h, Message{Topic: "a", Payload: []byte(p)}, false) }
	must(t, send("running"))
	waitTaken(t, d)
	must(t, send("queued"))
	errs := make(chan error, 3)
	for i, p := range []string{"first", "second", "third"} {
		go func() { errs <- send(p) }()
		testutil.Eventually(t, 2*time.Second, func() error { return blockedOn(d, 0, i+1) })
	}
	close(release)
	for range 3 {
		must(t, <-errs)
	}
	testutil.Eventually(t, 2*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if got := fmt.Sprint(order); got != "[running queued first second third]" {
			return fmt.Errorf("handled in order %s", got)
		}
		return nil
	})
}

// While an acknowledgement is awaited, or for an in-process publisher, the queue may grow past
// its limit instead of blocking: blocking there could wait on itself.
func TestDispatcherOverflowWhileAckAwaited(t *testing.T) {
	t.Parallel()
	d := newDispatcher(1, 1, discard)
	release := make(chan struct{})
	var handled atomic.Int64
	h := func(Message) { <-release; handled.Add(1) }
	m := Message{Topic: "a"}
	must(t, d.dispatch(h, m, false))
	waitTaken(t, d)
	must(t, d.dispatch(h, m, false))
	must(t, d.dispatch(h, m, true)) // in-process publisher: past the limit at once
	blocked := make(chan error, 1)
	go func() { blocked <- d.dispatch(h, m, false) }()
	testutil.Eventually(t, 2*time.Second, func() error { return blockedOn(d, 0, 1) })

	d.beginAckWait() // releases the blocked caller
	must(t, <-blocked)
	must(t, d.dispatch(h, m, false))
	d.endAckWait()
	if q := d.queued()[0]; q != 4 {
		t.Fatalf("queued %d, want 4 (limit 1, overflow allowed)", q)
	}
	close(release)
	d.close()
	if n := handled.Load(); n != 5 {
		t.Fatalf("handled %d of 5", n)
	}
	if len(d.shards[0].ring) > 2*d.shards[0].limit {
		t.Fatalf("ring kept %d slots after draining", len(d.shards[0].ring))
	}
}

func TestDispatcherClose(t *testing.T) {
	check := goroutineBaseline(t)
	d := newDispatcher(1, 1, discard)
	release := make(chan struct{})
	var handled atomic.Int64
	h := func(Message) { <-release; handled.Add(1) }
	m := Message{Topic: "a"}
	must(t, d.dispatch(h, m, false))
	waitTaken(t, d)
	must(t, d.dispatch(h, m, false))
	blocked := make(chan error, 1)
	go func() { blocked <- d.dispatch(h, m, false) }()
	testutil.Eventually(t, 2*time.Second, func() error { return blockedOn(d, 0, 1) })

	closed := make(chan struct{})
	go func() { d.close(); close(closed) }()
	if err := <-blocked; !errors.Is(err, ErrClosed) {
		t.Fatalf("blocked dispatch got %v, want ErrClosed", err)
	}
	close(release) // close waits for the running handler and drains the queued one
	<-closed
	if n := handled.Load(); n != 2 {
		t.Fatalf("handled %d, want the running and the queued message", n)
	}
	if err := d.dispatch(h, m, false); !errors.Is(err, ErrClosed) {
		t.Fatalf("dispatch after close: %v", err)
	}
	d.close() // idempotent
	check()
}

func TestDispatcherSurvivesPanickingHandler(t *testing.T) {
	t.Parallel()
	d := newDispatcher(1, 4, discard)
	var handled atomic.Int64
	must(t, d.dispatch(func(Message) { panic("bad message") }, Message{Topic: "a"}, false))
	must(t, d.dispatch(func(Message) { handled.Add(1) }, Message{Topic: "a"}, false))
	d.close()
	if handled.Load() != 1 {
		t.Fatal("the message after a panic was not handled")
	}
}

func TestShardOfIsStableAndSpreads(t *testing.T) {
	t.Parallel()
	seen := map[int]bool{}
	for i := range 64 {
		topic := fmt.Sprintf("v/VIN%014d/telemetry", i)
		s := shardOf(topic, 8)
		if s != shardOf(topic, 8) {
			t.Fatal("unstable")
		}
		seen[s] = true
	}
	if len(seen) < 6 {
		t.Fatalf("64 topics hit only %d of 8 shards", len(seen))
	}
}

// waitTaken waits until shard 0's worker has taken what was dispatched: its queue is empty.
func waitTaken(t testing.TB, d *dispatcher) {
	t.Helper()
	testutil.Eventually(t, 2*time.Second, func() error {
		if q := d.queued()[0]; q != 0 {
			return fmt.Errorf("queued %d", q)
		}
		return nil
	})
}

func blockedOn(d *dispatcher, shard, want int) error {
	s := d.shards[shard]
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiters) != want {
		return fmt.Errorf("%d callers blocked, want %d", len(s.waiters), want)
	}
	return nil
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
