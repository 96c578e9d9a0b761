package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/carstore"
)

// carRun is one running car: its logic, its connection and its queues.
type carRun struct {
	f      *Fleet
	car    *vehicle.Car
	log    *slog.Logger
	client mqttc.Client
	queue  chan []byte // v/{vin}/cmd
	keys   chan []byte // v/{vin}/keys
	// connected is signalled (capacity 1) after every (re)connect: time to publish the journal.
	connected chan struct{}
	// journalSent is the highest journal seq published on the current connection (the loop's
	// own); after a reconnect everything unacknowledged goes out again.
	journalSent uint64
	// journalSentAt is when the loop last published a journal entry: entries still not
	// acknowledged JournalResendInterval later go out again.
	journalSentAt time.Time

	// statusMu orders the online status published on (re)connect against the offline status
	// published on shutdown, so a late reconnect cannot leave the car "online".
	statusMu sync.Mutex
	stopping bool
}

// buildCar returns the garage's car for creds, or builds one (and puts it in the garage).
func (f *Fleet) buildCar(creds protocol.Credentials) (*vehicle.Car, error) {
	if f.cfg.Garage != nil {
		if car, ok := f.cfg.Garage.Car(creds.VIN); ok {
			return car, nil
		}
	}
	car, err := vehicle.NewCar(f.cfg.Store, creds, vehicle.CarOptions{Clock: f.cfg.Clock, Logger: f.log})
	if err != nil {
		return nil, err
	}
	if f.cfg.Garage != nil {
		f.cfg.Garage.Put(car)
	}
	return car, nil
}

func (f *Fleet) runCar(ctx context.Context, creds protocol.Credentials) {
	log := f.log.With("vin", creds.VIN)
	// The car exists (and is on the local link) before it connects: a car that cannot reach
	// the broker still opens for its owner's phone.
	car, err := f.buildCar(creds)
	if err != nil {
		f.fail(creds.VIN, err)
		return
	}
	r := &carRun{f: f, car: car, log: log, queue: make(chan []byte, commandQueue),
		keys: make(chan []byte, keysQueue), connected: make(chan struct{}, 1)}
	client, err := r.dial(ctx, creds)
	if err != nil {
		if ctx.Err() == nil {
			f.fail(creds.VIN, err)
		}
		return
	}
	r.client = client
	f.mu.Lock()
	f.clients = append(f.clients, client)
	f.mu.Unlock()
	f.connected.Add(1)
	f.checkSettled()

	cmdTopic := protocol.VehicleTopic(creds.VIN, protocol.SuffixCmd)
	err = client.Subscribe(ctx, cmdTopic, 1, func(m mqttc.Message) {
		select {
		case r.queue <- m.Payload:
		case <-ctx.Done():
		}
	})
	if err != nil {
		// The client subscribes again after every reconnect, so a car that lost its first
		// session keeps running; only a refusal is worth the log.
		log.Warn("subscribe to commands", "topic", cmdTopic, "err", err)
	}
	ackTopic := protocol.VehicleTopic(creds.VIN, protocol.SuffixEventsAck)
	if err := client.Subscribe(ctx, ackTopic, 1, r.onEventsAck); err != nil {
		log.Warn("subscribe to journal acknowledgements", "topic", ackTopic, "err", err)
	}
	keysTopic := protocol.VehicleTopic(creds.VIN, protocol.SuffixKeys)
	err = client.Subscribe(ctx, keysTopic, 1, func(m mqttc.Message) {
		select {
		case r.keys <- m.Payload:
		case <-ctx.Done():
		}
	})
	if err != nil {
		log.Warn("subscribe to whitelists", "topic", keysTopic, "err", err)
	}
	r.loop(ctx)
}

// dial connects the car. mqttc.Dial itself retries, with backoff, while the broker cannot be
// reached, and returns at once when the broker refuses the car: then the car has failed.
func (r *carRun) dial(ctx context.Context, creds protocol.Credentials) (mqttc.Client, error) {
	statusTopic := protocol.VehicleTopic(creds.VIN, protocol.SuffixStatus)
	opts := mqttc.Options{
		MaxReconnectInterval: r.f.cfg.MaxReconnectInterval,
		BrokerURL:            r.f.cfg.BrokerURL,
		ClientID:             creds.ClientID,
		Username:             creds.Username,
		Password:             creds.Token,
		Will: &mqttc.Message{
			Topic:    statusTopic,
			Payload:  r.f.statusPayload(protocol.StatusOffline),
			QoS:      1,
			Retained: true,
		},
		OnConnect: r.onConnect,
		Logger:    r.log,
	}
	tlsCfg, err := r.f.carTLS(creds)
	if err != nil {
		return nil, err
	}
	opts.TLS = tlsCfg
	client, err := r.f.cfg.Dial(ctx, opts)
	switch {
	case err == nil:
		return client, nil
	case errors.Is(err, mqttc.ErrNotAuthorized):
		return nil, fmt.Errorf("broker refused the credentials (bad or expired token: provision the car again): %w", err)
	case errors.Is(err, mqttc.ErrRefused):
		return nil, fmt.Errorf("broker refused the connection (is the client id the VIN?): %w", err)
	}
	return nil, err
}

// onConnect publishes the retained online status after every (re)connect, unless the car is
// shutting down, and has the car's loop publish its journal.
func (r *carRun) onConnect(c mqttc.Client) {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	if r.stopping {
		return
	}
	r.publishStatus(c, protocol.StatusOnline)
	select {
	case r.connected <- struct{}{}:
	default:
	}
}

func (r *carRun) publishStatus(c mqttc.Client, status string) {
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	topic := protocol.VehicleTopic(r.car.VIN(), protocol.SuffixStatus)
	if err := c.Publish(ctx, topic, 1, true, r.f.statusPayload(status)); err != nil {
		r.log.Warn("publish status", "status", status, "err", err)
	}
}

// loop is the car's single goroutine after connecting: commands, whitelists, journal and
// telemetry ticks, one at a time, until ctx ends; then it shuts the car down.
func (r *carRun) loop(ctx context.Context) {
	defer r.shutdown()
	// The first tick at a random point of the interval spreads the fleet out.
	timer, tick := r.f.cfg.Clock.NewTimer(rand.N(r.f.interval) + 1)
	defer timer.Stop()
	// The journal may hold entries from before this run; a failed attempt is retried on the
	// next event or tick. The first connection's signal is this start itself.
	journalPending := true
	select {
	case <-r.connected:
	default:
	}
	for {
		if ctx.Err() != nil {
			return
		}
		if journalPending && r.client.Connected() {
			journalPending = !r.publishJournal(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case payload := <-r.queue:
			r.handle(payload)
		case payload := <-r.keys:
			r.handleKeys(payload)
		case <-r.car.Journaled():
			journalPending = true
		case <-r.connected:
			// What was sent on the old connection may be lost with it (or with a broker
			// that restarted): send everything unacknowledged again.
			r.journalSent = 0
			journalPending = true
		case <-tick:
			r.sendTelemetry(ctx)
			if r.journalUnacknowledged() {
				r.journalSent = 0
				journalPending = true
			}
			timer.Reset(jitter(r.f.interval))
		}
	}
}

// handleKeys stores a whitelist and acknowledges it. An acknowledgement that cannot be
// published is not retried: the broker redelivers the retained whitelist on the next connect,
// and the car acknowledges it again.
func (r *carRun) handleKeys(payload []byte) {
	ack, err := r.car.HandleWhitelist(payload)
	if err != nil {
		return // the car logged the reason
	}
	r.f.whitelists.Add(1)
	b, err := json.Marshal(ack)
	if err != nil {
		r.log.Error("encode whitelist ack", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	if err := r.client.Publish(ctx, protocol.VehicleTopic(r.car.VIN(), protocol.SuffixKeysAck), 1, false, b); err != nil {
		r.log.Warn("publish whitelist ack; it is sent again when the whitelist is redelivered", "version", ack.Version, "err", err)
	}
}

// publishJournal publishes, in order, one QoS 1 message at a time, the car's unacknowledged
// journal entries not yet sent on this connection. It reports whether all were sent. Entries
// stay in the store until the gateway acknowledges them (onEventsAck); the gateway ignores an
// entry it filed before, and acknowledges it again.
func (r *carRun) publishJournal(ctx context.Context) bool {
	topic := protocol.VehicleTopic(r.car.VIN(), protocol.SuffixEvents)
	for ctx.Err() == nil {
		evs, err := r.car.Journal(r.journalSent, journalBatch)
		if err != nil {
			r.log.Error("read journal", "err", err)
			return false
		}
		if len(evs) == 0 {
			return true
		}
		for _, ev := range evs {
			b, err := json.Marshal(ev)
			if err != nil {
				r.log.Error("encode journal entry", "seq", ev.Seq, "err", err)
				return false
			}
			pctx, cancel := context.WithTimeout(ctx, statusTimeout)
			err = r.client.Publish(pctx, topic, 1, false, b)
			cancel()
			if err != nil {
				r.log.Debug("publish journal entry; kept for later", "seq", ev.Seq, "err", err)
				return false
			}
			r.journalSent, r.journalSentAt = ev.Seq, r.f.cfg.Clock.Now()
			r.f.eventsSent.Add(1)
		}
	}
	return false
}

// journalUnacknowledged reports whether entries published at least JournalResendInterval ago
// still wait for the gateway's acknowledgement: the broker that took them may have lost them
// (a restart before the gateway came back), and only a new publish brings them to the gateway.
func (r *carRun) journalUnacknowledged() bool {
	if r.journalSent == 0 || r.f.cfg.Clock.Since(r.journalSentAt) < r.f.journalResend {
		return false
	}
	evs, err := r.car.Journal(0, 1)
	return err == nil && len(evs) > 0 && evs[0].Seq <= r.journalSent
}

// onEventsAck deletes the journal entries the gateway acknowledged on v/{vin}/events/ack.
func (r *carRun) onEventsAck(m mqttc.Message) {
	var ack protocol.EventsAck
	if err := protocol.Decode(m.Payload, &ack); err != nil || ack.VIN != r.car.VIN() || len(ack.Seqs) > carstore.MaxJournalEntries {
		r.log.Warn("malformed journal acknowledgement", "err", err)
		return
	}
	if err := r.car.JournalAcked(ack.Seqs); err != nil {
		r.log.Error("delete acknowledged journal entries; they are sent again after a reconnect", "err", err)
	}
}

func jitter(d time.Duration) time.Duration {
	spread := time.Duration(float64(d) * telemetryJitter)
	return d - spread + rand.N(2*spread+1)
}

func (r *carRun) handle(payload []byte) {
	res := r.car.HandleCommand(payload)
	if res.Status == protocol.ResultExecuted {
		r.f.exec.Add(1)
	} else {
		r.f.reject.Add(1)
	}
	b, err := json.Marshal(res)
	if err != nil {
		r.log.Error("encode result", "cmd_id", res.ID, "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), resultTimeout)
	defer cancel()
	topic := protocol.VehicleTopic(r.car.VIN(), protocol.SuffixResult)
	// mqttc never queues while disconnected: a result that must get out is retried until the
	// client is back or resultTimeout ends.
	for {
		err = r.client.Publish(ctx, topic, 1, false, b)
		if err == nil {
			return
		}
		if !errors.Is(err, mqttc.ErrNotConnected) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(resultRetry):
		}
	}
	// The command's effect is persisted; the gateway reports it expired.
	r.log.Error("publish result", "cmd_id", res.ID, "status", res.Status, "err", err)
}

func (r *carRun) sendTelemetry(ctx context.Context) {
	// A disconnected car skips the tick rather than spending a sequence number on a message
	// that cannot be sent.
	if !r.client.Connected() {
		return
	}
	t, err := r.car.NextTelemetry()
	if err != nil {
		r.log.Error("telemetry", "err", err)
		return
	}
	b, err := json.Marshal(t)
	if err != nil {
		r.log.Error("encode telemetry", "err", err)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	topic := protocol.VehicleTopic(r.car.VIN(), protocol.SuffixTelemetry)
	if err := r.client.Publish(pctx, topic, 0, false, b); err != nil {
		if ctx.Err() == nil {
			r.log.Debug("publish telemetry", "seq", t.Seq, "err", err)
		}
		return
	}
	r.f.telemetry.Add(1)
}

// shutdown saves the car, says goodbye and disconnects. Commands still queued were not
// started and are dropped: the gateway reports them expired, and nothing runs half-way. The
// journal stays in the store for the next run.
func (r *carRun) shutdown() {
	if err := r.car.Save(); err != nil {
		r.log.Error("save car state", "err", err)
	}
	r.statusMu.Lock()
	r.stopping = true
	if r.client.Connected() {
		r.publishStatus(r.client, protocol.StatusOffline)
	}
	r.statusMu.Unlock()
	if err := r.client.Close(); err != nil {
		r.log.Warn("close client", "err", err)
	}
}
