package mqttc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"
)

// Options configure a paho client. Zero values take the defaults given per field.
type Options struct {
	// BrokerURL is tcp://host:port, ws://host:port/path, or with TLS ssl://, tls://, mqtts://
	// or wss://. Required.
	BrokerURL string
	// TLS is the TLS configuration of an ssl://, tls://, mqtts:// or wss:// URL: which CA to
	// trust (tlsconf.ClientConfig) and, for mutual TLS, the client certificate (a car's device
	// certificate). nil trusts the system's roots. It is refused with a plain
	// URL: a client that was told to verify the server never talks plain text instead.
	TLS *tls.Config
	// ClientID is the MQTT client id (a car's VIN; "{user}-{suffix}" for apps). Required.
	ClientID string
	// Username and Password are the MQTT credentials (the token's sub and the token). The
	// password is never logged.
	Username string
	Password string
	// Will, if set, is published by the broker when the connection drops without a DISCONNECT
	// (a car's retained "offline" status). A clean Close sends DISCONNECT, so no will: publish
	// the final status yourself before Close.
	Will *Message
	// OnConnect is called after every successful (re)connect, once the remembered
	// subscriptions have been made again: a car publishes its retained "online" status here.
	// It runs on the client's connection goroutine; it may Publish and Subscribe.
	OnConnect func(Client)
	// OnConnectionLost, if set, is called when an established connection drops (not on
	// Close), before the reconnect attempts; it runs on a goroutine of paho's and must not
	// block. A gateway replica notes the time, to tell a broker restart it already saw
	// handled by another replica (keys.RepublishAfterReconnect).
	OnConnectionLost func(error)
	// CleanSession false (the zero value) keeps the broker session across reconnects, so QoS 1
	// messages sent while the client was away are delivered when it comes back (for as long as
	// the broker keeps them: mochi keeps sessions in memory only). true starts afresh each time.
	CleanSession bool
	// ConnectTimeout bounds one connection attempt (dial and CONNACK). Default 5 s.
	ConnectTimeout time.Duration
	// PublishTimeout bounds the wait for a PUBACK or SUBACK. Default 5 s.
	PublishTimeout time.Duration
	// KeepAlive is the MQTT keep-alive interval. Default 30 s.
	KeepAlive time.Duration
	// MinReconnectInterval and MaxReconnectInterval shape the reconnect schedule (Backoff):
	// defaults 1 s and 30 s.
	MinReconnectInterval time.Duration
	MaxReconnectInterval time.Duration
	// Rand returns a uniform random number in [0, 1) for the reconnect jitter. Default
	// math/rand/v2.Float64; tests inject their own.
	Rand func() float64
	// Workers is the number of handler goroutines (default 1: one car's topics need no
	// parallelism); QueueSize the capacity of each one's queue (default 64).
	Workers   int
	QueueSize int
	// Logger receives connection events; default discards.
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, *url.URL, error) {
	var errs []error
	u, err := url.Parse(o.BrokerURL)
	switch {
	case o.BrokerURL == "":
		errs = append(errs, errors.New("BrokerURL is required"))
	case err != nil:
		errs = append(errs, fmt.Errorf("BrokerURL: %w", err))
	case u.Scheme == "" || u.Host == "":
		errs = append(errs, fmt.Errorf("BrokerURL %q: want scheme://host:port", u.Redacted()))
	}
	if o.TLS != nil && err == nil && u != nil && u.Scheme != "" && !secureScheme(u.Scheme) {
		errs = append(errs, fmt.Errorf("BrokerURL %q is plain text but a TLS configuration was given: use ssl:// or wss://", u.Redacted()))
	}
	if o.ClientID == "" {
		errs = append(errs, errors.New("ClientID is required"))
	}
	if o.Will != nil && (!validTopic(o.Will.Topic) || o.Will.QoS > 2) {
		errs = append(errs, fmt.Errorf("Will: invalid topic %q or qos %d", o.Will.Topic, o.Will.QoS))
	}
	if err := errors.Join(errs...); err != nil {
		return o, nil, fmt.Errorf("mqttc options: %w", err)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.ConnectTimeout, 5*time.Second)
	def(&o.PublishTimeout, 5*time.Second)
	def(&o.KeepAlive, 30*time.Second)
	def(&o.MinReconnectInterval, time.Second)
	def(&o.MaxReconnectInterval, 30*time.Second)
	if o.MaxReconnectInterval < o.MinReconnectInterval {
		o.MaxReconnectInterval = o.MinReconnectInterval
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	if o.Workers <= 0 {
		o.Workers = 1
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 64
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, u, nil
}

// Paho is a Client for a broker over the network, built on paho.mqtt.golang.
//
// It reconnects by itself, with Backoff (jittered), and makes its subscriptions again after
// every reconnect before it calls OnConnect. It never queues a publication while disconnected:
// Publish returns ErrNotConnected.
//
// Ordering and deadlock freedom. paho reads every packet of a connection on one goroutine and
// hands PUBLISH packets to a second one, its router, over an unbuffered channel. The router
// calls our callback; with SetOrderMatters(true) it does so in arrival order, one at a time,
// and our callback only puts the message into the topic's dispatcher queue, so per-topic order
// holds from the socket to the Handler. With SetOrderMatters(false) paho would start a
// goroutine per message: the order would be lost before our callback ran (two goroutines race
// to enqueue), and a full queue would pile up goroutines instead of pushing back.
//
// A full queue blocks the router, and that is the backpressure: paho stops reading, TCP fills,
// the broker slows down. It would also be a deadlock if a Handler waited for a PUBACK while
// the router is blocked behind it, since PUBACK travels the same blocked reader. So every call
// that waits for an acknowledgement (Publish at QoS 1, Subscribe) lifts the queue limit while
// it waits (dispatcher.beginAckWait), and every wait is bounded by ctx and PublishTimeout.
// Handlers still must not call Close.
type Paho struct {
	o       Options
	log     *slog.Logger
	client  paho.Client
	disp    *dispatcher
	backoff Backoff

	ctx    context.Context // ends with Close; bounds every wait
	cancel context.CancelFunc
	lost   chan struct{} // paho reported a lost connection (capacity 1)
	wg     sync.WaitGroup
	once   sync.Once

	mu   sync.Mutex
	subs map[string]*subscription // remembered; made again after every reconnect

	// earlyMu orders the messages a persistent session delivers before their subscription
	// is registered (see unrouted) with the ones that follow it.
	earlyMu sync.Mutex
	early   []paho.Message // arrived before any matching subscription, unacknowledged
}

// maxEarly bounds the messages kept for subscriptions not yet made: one per packet id, which
// is as many unacknowledged QoS 1/2 messages as a session can hold (mosquitto sends 20 at a
// time, mochi its whole in-flight store, 8,192 by default). Beyond it a message stays
// unacknowledged and comes again on the next connection.
const maxEarly = 65535

type subscription struct {
	qos byte
	h   Handler
	// ackAfter: acknowledge a message once h returned, not once it is queued.
	ackAfter bool
}

var (
	_ Client          = (*Paho)(nil)
	_ AckAfterHandler = (*Paho)(nil)
)

// Dial connects to the broker and returns once the first connection is up, the remembered
// subscriptions (none yet) are made and OnConnect has run.
//
// Network errors and "server unavailable" are retried with Backoff until ctx ends; a refusal
// that retrying cannot cure returns at once: ErrNotAuthorized for bad credentials, ErrRefused
// otherwise. One attempt is bounded by ConnectTimeout, so a cancelled ctx takes effect within
// it.
func Dial(ctx context.Context, o Options) (*Paho, error) {
	o, u, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	log := o.Logger.With("client_id", o.ClientID, "broker", u.Redacted())
	p := &Paho{
		o:       o,
		log:     log,
		backoff: Backoff{Min: o.MinReconnectInterval, Max: o.MaxReconnectInterval},
		lost:    make(chan struct{}, 1),
		subs:    make(map[string]*subscription),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.disp = newDispatcher(o.Workers, o.QueueSize, log)

	po := paho.NewClientOptions().
		AddBroker(o.BrokerURL).
		SetClientID(o.ClientID).
		SetUsername(o.Username).
		SetPassword(o.Password).
		SetCleanSession(o.CleanSession).
		SetProtocolVersion(4). // explicit: no silent second attempt with MQTT 3.1 on refusal
		SetOrderMatters(true). // see the type's comment
		SetAutoAckDisabled(true).
		SetAutoReconnect(false). // our own loop, with jitter
		SetConnectRetry(false).
		SetResumeSubs(false). // we make the subscriptions again ourselves
		SetConnectTimeout(o.ConnectTimeout).
		SetWriteTimeout(o.PublishTimeout).
		SetKeepAlive(o.KeepAlive).
		SetConnectionLostHandler(p.connectionLost).
		SetDefaultPublishHandler(p.unrouted)
	if secureScheme(u.Scheme) {
		tc := o.TLS
		if tc == nil {
			tc = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		po.SetTLSConfig(tc)
	}
	if o.Will != nil {
		po.SetBinaryWill(o.Will.Topic, o.Will.Payload, o.Will.QoS, o.Will.Retained)
	}
	p.client = paho.NewClient(po)

	for attempt := 0; ; attempt++ {
		err := p.connectOnce()
		if err == nil {
			break
		}
		if errors.Is(err, ErrNotAuthorized) || errors.Is(err, ErrRefused) || errors.Is(err, ErrTLS) {
			p.teardown()
			return nil, fmt.Errorf("mqtt connect to %s as %q: %w", u.Redacted(), o.ClientID, err)
		}
		delay := p.backoff.Delay(attempt, o.Rand())
		log.Warn("mqtt connect failed, retrying", "attempt", attempt+1, "retry_in", delay, "error", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			p.teardown()
			return nil, fmt.Errorf("mqtt connect to %s as %q: %w (last error: %v)", u.Redacted(), o.ClientID, ctx.Err(), err)
		case <-t.C:
		}
	}
	log.Info("mqtt connected")
	p.onConnected()
	p.wg.Add(1)
	go p.run()
	return p, nil
}

// connectOnce makes one connection attempt and classifies its failure.
func (p *Paho) connectOnce() error {
	if p.client.IsConnectionOpen() {
		return nil
	}
	tok := p.client.Connect()
	// paho bounds the attempt by ConnectTimeout (dial and handshake); the guard is for paho.
	guard := time.NewTimer(p.o.ConnectTimeout + time.Second)
	defer guard.Stop()
	select {
	case <-tok.Done():
	case <-guard.C:
		return fmt.Errorf("connect: %w", ErrTimeout)
	}
	err := tok.Error()
	if err == nil {
		return nil
	}
	var rc byte
	if ct, ok := tok.(*paho.ConnectToken); ok {
		rc = ct.ReturnCode()
	}
	switch rc {
	case pahopackets.ErrRefusedBadUsernameOrPassword, pahopackets.ErrRefusedNotAuthorised:
		return fmt.Errorf("%w (%v)", ErrNotAuthorized, err)
	case pahopackets.ErrRefusedIDRejected, pahopackets.ErrRefusedBadProtocolVersion:
		return fmt.Errorf("%w (%v)", ErrRefused, err)
	}
	if tlsFailure(err) {
		return fmt.Errorf("%w: %v", ErrTLS, err)
	}
	return err // network error or server unavailable: worth retrying
}

// secureScheme reports whether a broker URL's scheme is one of TLS. paho takes ssl, tls,
// mqtts, wss (and tcps).
func secureScheme(scheme string) bool {
	switch strings.ToLower(scheme) {
	case "ssl", "tls", "mqtts", "tcps", "wss":
		return true
	}
	return false
}

// tlsFailure reports whether err is a TLS handshake that cannot succeed by retrying: a server
// certificate that does not verify, or a server that does not speak TLS.
func tlsFailure(err error) bool {
	var (
		verify    *tls.CertificateVerificationError
		unknownCA x509.UnknownAuthorityError
		host      x509.HostnameError
		invalid   x509.CertificateInvalidError
		record    tls.RecordHeaderError
	)
	return errors.As(err, &verify) || errors.As(err, &unknownCA) || errors.As(err, &host) ||
		errors.As(err, &invalid) || errors.As(err, &record)
}

// connectionLost is paho's callback (on a goroutine of paho's): wake the reconnect loop.
func (p *Paho) connectionLost(_ paho.Client, err error) {
	p.log.Warn("mqtt connection lost", "error", err)
	if p.o.OnConnectionLost != nil {
		p.o.OnConnectionLost(err)
	}
	// Messages kept for a subscription not yet made can no longer be acknowledged (paho drops
	// an acknowledgement for a connection that is gone); the broker sends them again on the
	// next connection, and keeping these too would deliver them twice.
	p.earlyMu.Lock()
	clear(p.early)
	p.early = p.early[:0]
	p.earlyMu.Unlock()
	select {
	case p.lost <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// run is the reconnect loop; it owns every reconnect after the first connection.
func (p *Paho) run() {
	defer p.wg.Done()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.lost:
		}
		for attempt := 0; ; attempt++ {
			delay := p.backoff.Delay(attempt, p.o.Rand())
			t := time.NewTimer(delay)
			select {
			case <-p.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			err := p.connectOnce()
			if err == nil {
				p.log.Info("mqtt reconnected", "attempt", attempt+1)
				p.onConnected()
				break
			}
			// Refusals are retried too, at the capped pace: a broker that lost its key or a
			// token that was renewed elsewhere may come right, and a car must not give up.
			p.log.Warn("mqtt reconnect failed", "attempt", attempt+1, "error", err)
		}
	}
}

// onConnected makes the remembered subscriptions again, then calls OnConnect.
func (p *Paho) onConnected() {
	p.mu.Lock()
	subs := maps.Clone(p.subs)
	p.mu.Unlock()
	for filter, s := range subs {
		if err := p.subscribe(p.ctx, filter, s); err != nil {
			p.log.Error("mqtt subscription not restored", "filter", filter, "error", err)
		}
	}
	if p.o.OnConnect != nil {
		p.o.OnConnect(p)
	}
}

// Publish sends a message. qos 0 returns once it is written to the connection, qos 1 once
// the broker acknowledged it. Without a connection it returns ErrNotConnected at once. The
// payload must not be modified until Publish returns (after ErrTimeout: not at all).
func (p *Paho) Publish(ctx context.Context, topic string, qos byte, retain bool, payload []byte) error {
	if p.ctx.Err() != nil {
		return ErrClosed
	}
	if !validTopic(topic) || qos > 2 {
		return fmt.Errorf("publish %q qos %d: %w", topic, qos, ErrInvalidTopic)
	}
	if !p.client.IsConnectionOpen() {
		return fmt.Errorf("publish %q: %w", topic, ErrNotConnected)
	}
	if qos > 0 {
		p.disp.beginAckWait()
		defer p.disp.endAckWait()
	}
	if err := p.wait(ctx, p.client.Publish(topic, qos, retain, payload)); err != nil {
		return fmt.Errorf("publish %q: %w", topic, err)
	}
	return nil
}

// Subscribe remembers the subscription and, when connected, makes it now; otherwise it is made
// on the next connect and Subscribe returns nil. A subscription the broker refuses is
// forgotten (ErrSubscribeRefused). Subscribing to the same filter again replaces the handler.
func (p *Paho) Subscribe(ctx context.Context, filter string, qos byte, h Handler) error {
	return p.subscribeWith(ctx, filter, &subscription{qos: qos, h: h})
}

// SubscribeAckAfterHandler is Subscribe, but a message is acknowledged only once h has
// returned for it (AckAfterHandler). A message still queued or in h when the client closes
// or the connection drops is never acknowledged on that connection.
func (p *Paho) SubscribeAckAfterHandler(ctx context.Context, filter string, qos byte, h Handler) error {
	return p.subscribeWith(ctx, filter, &subscription{qos: qos, h: h, ackAfter: true})
}

func (p *Paho) subscribeWith(ctx context.Context, filter string, s *subscription) error {
	qos, h := s.qos, s.h
	if p.ctx.Err() != nil {
		return ErrClosed
	}
	if !validFilter(filter) || qos > 2 || h == nil {
		return fmt.Errorf("subscribe %q qos %d: %w", filter, qos, ErrInvalidTopic)
	}
	p.earlyMu.Lock()
	p.mu.Lock()
	p.subs[filter] = s
	p.mu.Unlock()
	// Messages of this filter that a persistent session delivered before it was registered
	// go first, in their order; later ones find s in unrouted, until paho's route takes over.
	keep := p.early[:0]
	for _, pm := range p.early {
		if !filterMatches(filter, pm.Topic()) {
			keep = append(keep, pm)
			continue
		}
		p.deliver(s, pm)
	}
	clear(p.early[len(keep):])
	p.early = keep
	p.earlyMu.Unlock()
	// Checked after remembering: either onConnected's snapshot includes s, or the session was
	// already open here and we subscribe ourselves.
	if !p.client.IsConnectionOpen() {
		return nil
	}
	return p.subscribe(ctx, filter, s)
}

func (p *Paho) subscribe(ctx context.Context, filter string, s *subscription) error {
	p.disp.beginAckWait()
	defer p.disp.endAckWait()
	tok := p.client.Subscribe(filter, s.qos, p.route(s))
	if err := p.wait(ctx, tok); err != nil {
		return fmt.Errorf("subscribe %q: %w", filter, err)
	}
	st, _ := tok.(*paho.SubscribeToken)
	if st == nil {
		return nil
	}
	for _, code := range st.Result() {
		if code == 0x80 {
			p.mu.Lock()
			if p.subs[filter] == s {
				delete(p.subs, filter)
			}
			p.mu.Unlock()
			return fmt.Errorf("subscribe %q: %w", filter, ErrSubscribeRefused)
		}
	}
	return nil
}

// unrouted is paho's default handler: it gets the messages no registered route matches. With
// a persistent session (CleanSession false) the broker sends what it queued for the client as
// soon as the connection is up, before the process has subscribed (after a restart paho has no
// routes yet). Those are kept, unacknowledged, until Subscribe registers a matching filter, so
// nothing the broker held for the gateway (results, journals, acknowledgements) is lost.
func (p *Paho) unrouted(_ paho.Client, pm paho.Message) {
	p.earlyMu.Lock()
	defer p.earlyMu.Unlock()
	p.mu.Lock()
	var sub *subscription
	for filter, s := range p.subs {
		if filterMatches(filter, pm.Topic()) {
			sub = s
			break
		}
	}
	p.mu.Unlock()
	if sub != nil {
		p.deliver(sub, pm)
		return
	}
	if len(p.early) < maxEarly {
		p.early = append(p.early, pm)
		return
	}
	p.log.Warn("message for no subscription left unacknowledged", "topic", pm.Topic())
}

// deliver queues a message for s's handler and acknowledges it once queued (see route), or,
// for an ackAfter subscription, once the handler returned.
func (p *Paho) deliver(s *subscription, pm paho.Message) {
	m := Message{Topic: pm.Topic(), Payload: pm.Payload(), QoS: pm.Qos(), Retained: pm.Retained(), Duplicate: pm.Duplicate()}
	if s.ackAfter {
		_ = p.disp.dispatchJob(job{h: s.h, m: m, ack: pm.Ack}, false)
		return
	}
	if err := p.disp.dispatch(s.h, m, false); err != nil {
		return
	}
	pm.Ack()
}

// filterMatches reports whether an MQTT topic filter matches a topic name: "+" is one level,
// a trailing "#" any number (zero included); wildcards never match a topic starting with "$".
// A shared subscription's filter ($share/GROUP/FILTER) matches what FILTER matches.
func filterMatches(filter, topic string) bool {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		_, shared, ok := strings.Cut(rest, "/")
		if !ok {
			return false
		}
		filter = shared
	}
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		if !fmore || !tmore {
			// "a/#" matches "a" too: the filter's remaining level is a lone "#".
			return fmore == tmore || (fmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}

// route is the callback paho's router calls, in arrival order, for a subscription. It only
// queues the message; the acknowledgement goes out once the message is queued (handled or
// not, it is ours then), or for SubscribeAckAfterHandler once handled. A message that could
// not be queued because the client is closing is not acknowledged, so a persistent session
// gets it again.
func (p *Paho) route(s *subscription) paho.MessageHandler {
	return func(_ paho.Client, pm paho.Message) { p.deliver(s, pm) }
}

// wait waits for a token, bounded by ctx, PublishTimeout and Close: never an unbounded Wait.
func (p *Paho) wait(ctx context.Context, tok paho.Token) error {
	t := time.NewTimer(p.o.PublishTimeout)
	defer t.Stop()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return ctx.Err()
	case <-p.ctx.Done():
		return ErrClosed
	case <-t.C:
		return ErrTimeout
	}
	err := tok.Error()
	if errors.Is(err, paho.ErrNotConnected) {
		return ErrNotConnected
	}
	return err
}

// Connected reports whether the connection is up now.
func (p *Paho) Connected() bool {
	return p.ctx.Err() == nil && p.client.IsConnectionOpen()
}

// Close stops the reconnect loop, stops the handler workers (what is queued is still handled,
// new messages are not acknowledged), and disconnects. It is idempotent and must not be called
// from a Handler.
func (p *Paho) Close() error {
	p.once.Do(func() {
		p.cancel()
		p.wg.Wait()
		p.log.Info("mqtt closing")
		p.teardown()
	})
	return nil
}

// teardown releases the router if it is blocked on a full queue, then disconnects, so paho's
// goroutines can all end.
func (p *Paho) teardown() {
	p.cancel()
	p.disp.close()
	// Disconnect waits up to the quiesce time for the DISCONNECT to be written and paho's
	// goroutines to stop; with the router released that takes a round of scheduling.
	p.client.Disconnect(1000)
}
