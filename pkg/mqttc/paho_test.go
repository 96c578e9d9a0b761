package mqttc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/internal/testutil"
)

// dialTest dials the broker with fast reconnects and closes the client at the end of the test.
func dialTest(t testing.TB, url, id string, mod func(*Options)) *Paho {
	t.Helper()
	o := Options{
		BrokerURL:            url,
		ClientID:             id,
		CleanSession:         true,
		MinReconnectInterval: 20 * time.Millisecond,
		MaxReconnectInterval: 200 * time.Millisecond,
		PublishTimeout:       10 * time.Second,
		Logger:               discard,
	}
	if mod != nil {
		mod(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := Dial(ctx, o)
	if err != nil {
		t.Fatalf("dial %s: %v", id, err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// inbox collects messages for tests.
type inbox struct {
	mu   sync.Mutex
	msgs []Message
}

func (b *inbox) handle(m Message) {
	b.mu.Lock()
	b.msgs = append(b.msgs, m)
	b.mu.Unlock()
}

func (b *inbox) all() []Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Message(nil), b.msgs...)
}

// has reports whether a message with topic and payload arrived.
func (b *inbox) has(topic, payload string) error {
	for _, m := range b.all() {
		if m.Topic == topic && string(m.Payload) == payload {
			return nil
		}
	}
	return fmt.Errorf("no %q on %s among %d messages", payload, topic, len(b.all()))
}

func TestPahoRoundTrip(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	gw := NewInline(b.Server, InlineOptions{Logger: discard})
	defer gw.Close()
	ctx := context.Background()

	var atGateway inbox
	must(t, gw.Subscribe(ctx, "v/+/result", 1, atGateway.handle))
	car := dialTest(t, b.URL(), "car1", nil)
	var atCar inbox
	must(t, car.Subscribe(ctx, "v/car1/cmd", 1, atCar.handle))
	if !car.Connected() {
		t.Fatal("not connected after Dial")
	}

	must(t, gw.Publish(ctx, "v/car1/cmd", 1, false, []byte("unlock")))
	testutil.Eventually(t, 5*time.Second, func() error { return atCar.has("v/car1/cmd", "unlock") })
	for _, qos := range []byte{0, 1} {
		payload := fmt.Sprintf("done qos %d", qos)
		must(t, car.Publish(ctx, "v/car1/result", qos, false, []byte(payload)))
		testutil.Eventually(t, 5*time.Second, func() error { return atGateway.has("v/car1/result", payload) })
	}
	if m := atCar.all()[0]; m.QoS != 1 || m.Retained {
		t.Fatalf("got %+v", m)
	}
}

// Messages of one topic reach the Handler in publication order, also with tiny queues that
// block paho's router all the time.
func TestPahoPerTopicOrder(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	gw := NewInline(b.Server, InlineOptions{Logger: discard})
	defer gw.Close()
	ctx := context.Background()

	// Stay below the broker's write queue for this client (1024): mochi drops beyond it, which
	// is the fan-in problem the Inline client exists for, not what this test is about.
	const topics, perTopic = 3, 300
	var mu sync.Mutex
	next := map[string]int{}
	var errs []error
	var got atomic.Int64
	sub := dialTest(t, b.URL(), "sub", func(o *Options) { o.Workers, o.QueueSize = 2, 4 })
	must(t, sub.Subscribe(ctx, "order/#", 1, func(m Message) {
		var n int
		fmt.Sscan(string(m.Payload), &n)
		mu.Lock()
		if n != next[m.Topic] {
			errs = append(errs, fmt.Errorf("%s: got %d, want %d", m.Topic, n, next[m.Topic]))
		}
		next[m.Topic] = n + 1
		mu.Unlock()
		got.Add(1)
	}))

	var wg sync.WaitGroup
	for i := range topics {
		wg.Go(func() {
			for n := range perTopic {
				if err := gw.Publish(ctx, fmt.Sprintf("order/%d", i), 1, false, fmt.Appendf(nil, "%d", n)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := got.Load(); n != topics*perTopic {
			return fmt.Errorf("received %d of %d", n, topics*perTopic)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// The broker goes away and a new one comes up on the same address: the client reconnects by
// itself, makes its subscription again, calls OnConnect again, and receives.
func TestPahoResubscribesAfterBrokerRestart(t *testing.T) {
	t.Parallel()
	b1 := startBroker(t, brokerConfig{})
	var connects atomic.Int32
	car := dialTest(t, b1.URL(), "car1", func(o *Options) {
		o.OnConnect = func(c Client) {
			connects.Add(1)
			if err := c.Publish(context.Background(), "v/car1/status", 1, true, []byte("online")); err != nil {
				t.Errorf("publish status from OnConnect: %v", err)
			}
		}
	})
	var atCar inbox
	ctx := context.Background()
	must(t, car.Subscribe(ctx, "v/car1/keys", 1, atCar.handle))
	gw1 := NewInline(b1.Server, InlineOptions{Logger: discard})
	defer gw1.Close()
	must(t, gw1.Publish(ctx, "v/car1/keys", 1, true, []byte("whitelist v1")))
	testutil.Eventually(t, 5*time.Second, func() error { return atCar.has("v/car1/keys", "whitelist v1") })

	b1.Stop()
	testutil.Eventually(t, 5*time.Second, func() error {
		if car.Connected() {
			return errors.New("still connected")
		}
		return nil
	})
	b2 := startBroker(t, brokerConfig{addr: b1.Addr})
	gw2 := NewInline(b2.Server, InlineOptions{Logger: discard})
	defer gw2.Close()
	var status inbox
	must(t, gw2.Subscribe(ctx, "v/+/status", 1, status.handle))
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := connects.Load(); n != 2 {
			return fmt.Errorf("OnConnect called %d times", n)
		}
		return nil
	})
	// The new broker knows nothing: the gateway publishes the whitelist again (docs/ARCHITECTURE.md,
	// "The broker holds nothing that matters").
	must(t, gw2.Publish(ctx, "v/car1/keys", 1, true, []byte("whitelist v1 again")))
	testutil.Eventually(t, 5*time.Second, func() error { return atCar.has("v/car1/keys", "whitelist v1 again") })
	testutil.Eventually(t, 5*time.Second, func() error { return status.has("v/car1/status", "online") })
}

// A connection that drops without DISCONNECT makes the broker publish the will; the client
// comes back by itself.
func TestPahoWillAndReconnect(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	gw := NewInline(b.Server, InlineOptions{Logger: discard})
	defer gw.Close()
	ctx := context.Background()
	var status inbox
	must(t, gw.Subscribe(ctx, "v/+/status", 1, status.handle))
	var connects atomic.Int32
	car := dialTest(t, b.URL(), "car1", func(o *Options) {
		o.Will = &Message{Topic: "v/car1/status", Payload: []byte("offline"), QoS: 1, Retained: true}
		o.OnConnect = func(Client) { connects.Add(1) }
	})

	cl, ok := b.Clients.Get("car1")
	if !ok {
		t.Fatal("broker does not know car1")
	}
	cl.Stop(errors.New("test: connection cut")) // as a network failure would
	testutil.Eventually(t, 5*time.Second, func() error { return status.has("v/car1/status", "offline") })
	testutil.Eventually(t, 5*time.Second, func() error {
		if connects.Load() != 2 || !car.Connected() {
			return fmt.Errorf("connects %d, connected %v", connects.Load(), car.Connected())
		}
		return nil
	})
}

// Nothing is queued while disconnected, and nothing is reported sent: Publish says so.
func TestPahoPublishWhileDisconnected(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	car := dialTest(t, b.URL(), "car1", nil)
	b.Stop()
	testutil.Eventually(t, 5*time.Second, func() error {
		if car.Connected() {
			return errors.New("still connected")
		}
		return nil
	})
	for _, qos := range []byte{0, 1} {
		err := car.Publish(context.Background(), "v/car1/telemetry", qos, false, []byte("{}"))
		if !errors.Is(err, ErrNotConnected) {
			t.Fatalf("qos %d: got %v, want ErrNotConnected", qos, err)
		}
	}
	// A subscription made while away is remembered, not refused.
	must(t, car.Subscribe(context.Background(), "v/car1/cmd", 1, func(Message) {}))
}

func TestDialRefusedCredentials(t *testing.T) {
	b := startBroker(t, brokerConfig{auth: &denyHook{}})
	check := goroutineBaseline(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := Dial(ctx, Options{
		BrokerURL: b.URL(), ClientID: "car1", Username: "car1", Password: "s3cret-token", Logger: discard,
	})
	if !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("got %v, want ErrNotAuthorized", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Dial retried a refusal until the context ended")
	}
	if strings.Contains(err.Error(), "s3cret-token") {
		t.Fatalf("error reveals the password: %v", err)
	}
	check()
}

// At the first connect a network error is retried until the context ends, and a broker that
// comes up meanwhile is found.
func TestDialRetriesNetworkErrors(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := l.Addr().String()
	must(t, l.Close()) // nobody listens there now

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var draws atomic.Int32
	o := Options{
		BrokerURL: "tcp://" + addr, ClientID: "car1", Logger: discard,
		MinReconnectInterval: 10 * time.Millisecond, MaxReconnectInterval: 50 * time.Millisecond,
		Rand: func() float64 { draws.Add(1); return 0.5 },
	}
	if _, err := Dial(ctx, o); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the context's error", err)
	}
	if draws.Load() == 0 {
		t.Fatal("retries did not draw their jitter from Options.Rand")
	}

	type result struct {
		p   *Paho
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p, err := Dial(ctx, o)
		done <- result{p, err}
	}()
	startBroker(t, brokerConfig{addr: addr})
	r := <-done
	must(t, r.err)
	_ = r.p.Close()
}

func TestDialValidatesOptions(t *testing.T) {
	t.Parallel()
	_, err := Dial(context.Background(), Options{BrokerURL: "localhost:1883"})
	if err == nil || !strings.Contains(err.Error(), "ClientID") || !strings.Contains(err.Error(), "BrokerURL") {
		t.Fatalf("want both problems reported, got %v", err)
	}
}

func TestPahoSubscribeRefused(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{auth: &aclHook{deny: "other/"}})
	car := dialTest(t, b.URL(), "car1", nil)
	err := car.Subscribe(context.Background(), "other/#", 1, func(Message) {})
	if !errors.Is(err, ErrSubscribeRefused) {
		t.Fatalf("got %v, want ErrSubscribeRefused", err)
	}
	car.mu.Lock()
	_, remembered := car.subs["other/#"]
	car.mu.Unlock()
	if remembered {
		t.Fatal("a refused subscription is remembered")
	}
}

// A handler that publishes at QoS 1 and waits for the PUBACK, while its own queue is full and
// paho's router is blocked behind it, must not wait on itself (see Paho's comment).
func TestPahoHandlerPublishUnderFullQueue(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	gw := NewInline(b.Server, InlineOptions{Logger: discard})
	defer gw.Close()
	ctx := context.Background()
	var replies atomic.Int64
	must(t, gw.Subscribe(ctx, "out/+", 1, func(Message) { replies.Add(1) }))

	const n = 300 // below the broker's write queue for the client
	var failed atomic.Int64
	car := dialTest(t, b.URL(), "car1", func(o *Options) { o.Workers, o.QueueSize = 1, 1 })
	must(t, car.Subscribe(ctx, "in/+", 1, func(m Message) {
		if err := car.Publish(ctx, "out/car1", 1, false, m.Payload); err != nil {
			failed.Add(1)
		}
	}))
	for i := range n {
		must(t, gw.Publish(ctx, "in/car1", 1, false, fmt.Appendf(nil, "%d", i)))
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		if r := replies.Load(); r+failed.Load() != n {
			return fmt.Errorf("%d replies, %d failed of %d", r, failed.Load(), n)
		}
		return nil
	})
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d handler publishes failed (waited on their own blocked reader)", f)
	}
}

func TestPahoCloseIdempotentNoLeak(t *testing.T) {
	b := startBroker(t, brokerConfig{})
	gw := NewInline(b.Server, InlineOptions{Logger: discard})
	defer gw.Close()
	check := goroutineBaseline(t)
	ctx := context.Background()
	car, err := Dial(ctx, Options{BrokerURL: b.URL(), ClientID: "car1", CleanSession: true, Logger: discard})
	must(t, err)
	var atCar inbox
	must(t, car.Subscribe(ctx, "v/car1/cmd", 1, atCar.handle))
	must(t, gw.Publish(ctx, "v/car1/cmd", 1, false, []byte("lock")))
	testutil.Eventually(t, 5*time.Second, func() error { return atCar.has("v/car1/cmd", "lock") })
	must(t, car.Publish(ctx, "v/car1/result", 1, false, []byte("ok")))

	must(t, car.Close())
	must(t, car.Close())
	if car.Connected() {
		t.Fatal("connected after Close")
	}
	if err := car.Publish(ctx, "v/car1/result", 0, false, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after Close: %v", err)
	}
	if err := car.Subscribe(ctx, "v/car1/cmd", 1, atCar.handle); !errors.Is(err, ErrClosed) {
		t.Fatalf("subscribe after Close: %v", err)
	}
	check() // paho's goroutines and the broker's for this client are gone too
}

// aclHook admits everyone and denies filters and topics under one prefix.
type aclHook struct {
	auth.AllowHook
	deny string
}

func (h *aclHook) ID() string { return "acl-test" }
func (h *aclHook) OnACLCheck(_ *mqtt.Client, topic string, _ bool) bool {
	return !strings.HasPrefix(topic, h.deny)
}
func (h *aclHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func TestFilterMatches(t *testing.T) {
	t.Parallel()
	cases := []struct {
		filter, topic string
		want          bool
	}{
		{"v/+/result", "v/WVW1/result", true},
		{"v/+/result", "v/WVW1/status", false},
		{"v/+/result", "v/WVW1/result/x", false},
		{"v/+/keys/ack", "v/WVW1/keys/ack", true},
		{"v/+/keys/ack", "v/WVW1/keys", false},
		{"app/+/cmd", "app/alice/cmd", true},
		{"v/#", "v/WVW1/result", true},
		{"v/#", "v", true},
		{"#", "v/a", true},
		{"#", "$SYS/broker", false},
		{"+/a", "$SYS/a", false},
		{"$SYS/#", "$SYS/broker", true},
		{"a/b", "a/b", true},
		{"a/b", "a", false},
		{"a", "a/b", false},
		{"+", "a", true},
		{"+", "a/b", false},
		{"a/+", "a/", true},
		{"+/+", "/", true},
		{"$share/gateway/app/+/cmd", "app/alice/cmd", true},
		{"$share/gateway/v/+/result", "v/WVW1/status", false},
		{"$share/gateway", "gateway", false},
	}
	for _, c := range cases {
		if got := filterMatches(c.filter, c.topic); got != c.want {
			t.Errorf("filterMatches(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}

// A persistent session's queued messages arrive right after CONNECT, before the restarted
// process has subscribed again: they are kept until it does and delivered first, then the
// live ones. Nothing the broker queued for the client is lost.
// queueForAbsentSession makes a persistent session id subscribed to v/+/events, with nobody
// connected, and has car1 publish n QoS 1 events ("0", "1", …) into it; it returns car1.
func queueForAbsentSession(t *testing.T, b *testBroker, id string, n int) *Paho {
	t.Helper()
	ctx := context.Background()
	first := dialTest(t, b.URL(), id, func(o *Options) { o.CleanSession = false })
	must(t, first.Subscribe(ctx, "v/+/events", 1, func(Message) {}))
	must(t, first.Close())
	// Until the broker has seen it go, the first client could still take (and acknowledge) a
	// message; the tests are about what the broker queues for the session while nobody is there.
	testutil.Eventually(t, 5*time.Second, func() error {
		if cl, ok := b.Server.Clients.Get(id); ok && !cl.Closed() {
			return errors.New("the broker still holds the first connection")
		}
		return nil
	})
	car := dialTest(t, b.URL(), "car1", nil)
	for i := range n {
		must(t, car.Publish(ctx, "v/car1/events", 1, false, []byte(fmt.Sprint(i))))
	}
	// mochi acknowledges a QoS 1 publish before it fans it out, so the last of them may not be
	// queued yet; a takeover that clones the session meanwhile would miss it (see
	// docs/ARCHITECTURE.md, Known limits). The tests are about what was queued: wait for all.
	testutil.Eventually(t, 5*time.Second, func() error {
		cl, ok := b.Server.Clients.Get(id)
		if !ok {
			return errors.New("the broker forgot the session")
		}
		if q := cl.State.Inflight.Len(); q != n {
			return fmt.Errorf("%d of %d messages queued for the session", q, n)
		}
		return nil
	})
	return car
}

func TestPahoPersistentSessionDeliversQueuedBeforeSubscribe(t *testing.T) {
	b := startBroker(t, brokerConfig{})
	ctx := context.Background()
	persistent := func(o *Options) { o.CleanSession = false }
	const queued = 20
	car := queueForAbsentSession(t, b, "gateway-x", queued)

	// The "restarted" process: the broker delivers the queue as soon as it connects.
	second := dialTest(t, b.URL(), "gateway-x", persistent)
	time.Sleep(200 * time.Millisecond) // the queue arrives before the subscription below
	var got inbox
	must(t, second.Subscribe(ctx, "v/+/events", 1, got.handle))
	must(t, car.Publish(ctx, "v/car1/events", 1, false, []byte("live")))
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := len(got.all()); n != queued+1 {
			return fmt.Errorf("%d of %d messages", n, queued+1)
		}
		return nil
	})
	// Each queued message exactly once, then the live one. (Their order among themselves is the
	// broker's: mochi re-sends a session's in-flight messages sorted by the second they were
	// created in, so messages of the same second come in any order; the gateway's handlers do
	// not depend on it: events carry sequence numbers, acks versions, results ids.)
	seen := map[string]bool{}
	for i, m := range got.all() {
		p := string(m.Payload)
		if seen[p] {
			t.Fatalf("message %q delivered twice", p)
		}
		seen[p] = true
		if (i == queued) != (p == "live") {
			t.Fatalf("message %d is %q: the live message must come after the %d queued ones", i, p, queued)
		}
	}
}

// A connection lost between the connect and the subscription: what the broker queued arrives
// again on the next connection (it was never acknowledged), and is handed over once, not twice.
func TestPahoEarlyMessagesAcrossAReconnect(t *testing.T) {
	b := startBroker(t, brokerConfig{})
	ctx := context.Background()
	persistent := func(o *Options) { o.CleanSession = false }
	const queued = 5
	queueForAbsentSession(t, b, "gateway-y", queued)

	second := dialTest(t, b.URL(), "gateway-y", persistent)
	testutil.Eventually(t, 5*time.Second, func() error {
		second.earlyMu.Lock()
		defer second.earlyMu.Unlock()
		if n := len(second.early); n != queued {
			return fmt.Errorf("%d of %d queued messages arrived", n, queued)
		}
		return nil
	})
	cl, _ := b.Server.Clients.Get("gateway-y")
	cl.Stop(errors.New("test: connection dropped"))
	testutil.Eventually(t, 5*time.Second, func() error {
		if cl2, ok := b.Server.Clients.Get("gateway-y"); !ok || cl2 == cl || cl2.Closed() {
			return errors.New("not reconnected yet")
		}
		return nil
	})
	// The broker sends the queue again on the new connection.
	testutil.Eventually(t, 5*time.Second, func() error {
		second.earlyMu.Lock()
		defer second.earlyMu.Unlock()
		if n := len(second.early); n < queued {
			return fmt.Errorf("%d of %d queued messages arrived again", n, queued)
		}
		return nil
	})
	var got inbox
	must(t, second.Subscribe(ctx, "v/+/events", 1, got.handle))
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := len(got.all()); n < queued {
			return fmt.Errorf("%d of %d messages", n, queued)
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // time for a second copy to show
	seen := map[string]int{}
	for _, m := range got.all() {
		seen[string(m.Payload)]++
	}
	for i := range queued {
		if n := seen[fmt.Sprint(i)]; n != 1 {
			t.Fatalf("message %d delivered %d times; got %d messages", i, n, len(got.all()))
		}
	}
}
