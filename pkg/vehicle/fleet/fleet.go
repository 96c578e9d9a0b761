// Package fleet is the MQTT runtime of simulated cars (pkg/vehicle): a Fleet connects each car
// of a process to one broker with its own connection, hands it the commands and whitelists
// that arrive, and publishes its results, telemetry, status and journal.
package fleet

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"telematics/pkg/clock"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
)

// Defaults of Config.
const (
	DefaultTelemetryInterval = 10 * time.Second
	DefaultConnectRate       = 200.0 // cars per second
)

const (
	// telemetryJitter spreads the cars' ticks (±10 %) so they do not publish in lockstep.
	telemetryJitter = 0.1
	// resultTimeout bounds publishing one result. It is not derived from the fleet's context:
	// a command that was executed gets its result out even while the fleet shuts down.
	resultTimeout = 10 * time.Second
	// statusTimeout bounds publishing an online/offline status.
	statusTimeout = 5 * time.Second
	// commandQueue is how many commands a car holds while it works on one; a full queue
	// blocks the subscription handler, which pushes back on the broker instead of dropping.
	commandQueue = 16
	// resultRetry is how often a car that lost its connection tries again to publish a result.
	resultRetry = 200 * time.Millisecond
	// keysQueue is how many whitelist messages a car holds while it works (the gateway
	// publishes a car's whitelist rarely, and retained: only the newest matters).
	keysQueue = 4
	// journalBatch is how many journal entries a car reads from its store at a time to
	// publish them.
	journalBatch = 32
	// defaultJournalResend is Config.JournalResendInterval's default.
	defaultJournalResend = 30 * time.Second
)

// DialFunc connects one MQTT client; mqttc.Dial in production. It returns once the client is
// connected and OnConnect has run, retrying unreachable brokers itself until ctx ends, and fails
// with an error wrapping mqttc.ErrNotAuthorized when the broker refuses the credentials.
type DialFunc func(ctx context.Context, opts mqttc.Options) (mqttc.Client, error)

// dialPaho is mqttc.Dial as a DialFunc (without turning a nil *Paho into a non-nil Client).
func dialPaho(ctx context.Context, opts mqttc.Options) (mqttc.Client, error) {
	c, err := mqttc.Dial(ctx, opts)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Config configures a Fleet (New, Run).
type Config struct {
	// BrokerURL is the broker every car connects to, e.g. tcp://127.0.0.1:1883, or
	// ssl://127.0.0.1:8883 with TLS.
	BrokerURL string
	// TLS verifies the broker of an ssl:// or wss:// BrokerURL (tlsconf.ClientConfig): the
	// CA the cars trust. nil trusts the system's roots. A car whose credentials carry a device
	// certificate presents it on top (carTLS).
	TLS *tls.Config
	// Creds are the cars to run, one MQTT connection each.
	Creds []protocol.Credentials
	// Store holds every car's state and replay cache (a *carstore.Store); the caller opens and
	// closes it.
	Store vehicle.CarStore
	// TelemetryInterval is the mean time between two telemetry messages of a car (default 10 s);
	// each interval varies by ±10 %.
	TelemetryInterval time.Duration
	// ConnectRate bounds how many cars start connecting per second (default 200), so that a
	// large fleet does not storm the broker.
	ConnectRate float64
	// MaxReconnectInterval caps a car's reconnect backoff (mqttc's default, 30 s, when zero).
	// After a broker outage cars come back spread over up to this long.
	MaxReconnectInterval time.Duration
	// Logger receives per-car events; discarded when nil.
	Logger *slog.Logger
	// Clock is the cars' clock, which also times their telemetry and journal resends; the real
	// one when nil. Connection pacing, reconnect backoff and publish timeouts stay on real
	// time: they guard against a slow broker, they are not the car's behaviour.
	Clock clock.Clock
	// Dial connects a car; mqttc.Dial when nil.
	Dial DialFunc
	// JournalResendInterval is how long a car waits for the gateway to acknowledge the journal
	// entries it published before it publishes them again (default 30 s). Besides after every
	// reconnect, this covers a broker that restarted and lost what it queued for a gateway
	// that had not yet come back, while the car's own connection stayed up or came back first.
	JournalResendInterval time.Duration
	// Garage, when set, receives every car Run builds, so that a link.Server on the same
	// garage serves them over the local link, also while the broker is down. A car already in
	// the garage under a VIN of Creds is run as it is instead of being built again (a drill can
	// stop Run and start it again around the same cars). Cars stay in the garage after
	// Run returns.
	Garage *vehicle.Garage
}

// Stats counts what a fleet did.
type Stats struct {
	Cars          int    // cars in the fleet
	Connected     int    // cars that connected at least once
	Online        int    // cars connected at the moment
	Failed        int    // cars given up on: refused credentials, unusable credentials
	TelemetrySent uint64 // telemetry messages handed to the broker
	Executed      uint64 // cloud commands executed
	Rejected      uint64 // cloud commands rejected
	Whitelists    uint64 // whitelists acknowledged (stored or redelivered)
	EventsSent    uint64 // journal entries published on v/{vin}/events (again after a reconnect, too)
	// FirstFailure is the first car given up on, "VIN: error"; "" while none failed.
	FirstFailure string
}

// ErrNoCarConnected is returned by Run when every car of the fleet failed for good.
var ErrNoCarConnected = errors.New("no car could connect")

// Fleet is a fleet of cars to run against one broker (New, Fleet.Run). While it runs, Stats
// and Settled tell how it is doing, e.g. for a progress display.
type Fleet struct {
	cfg      Config
	log      *slog.Logger
	interval time.Duration
	// journalResend is Config.JournalResendInterval, defaulted.
	journalResend time.Duration

	connected, failed       atomic.Int64
	telemetry, exec, reject atomic.Uint64
	whitelists, eventsSent  atomic.Uint64
	settled                 chan struct{} // closed once every car connected or failed
	ran                     atomic.Bool   // Run was called
	settleOnce              sync.Once

	mu         sync.Mutex
	clients    []mqttc.Client
	firstError string // the first permanent failure, for Stats
}

// Run connects every car to the broker and runs it until ctx is cancelled: each car has
// its own MQTT connection (client id and user from its credentials, the token as password, a
// retained "offline" will on v/{vin}/status), publishes a retained "online" status whenever it
// connects, executes the commands it receives on v/{vin}/cmd one at a time and publishes each
// result on v/{vin}/result (QoS 1), and publishes telemetry on v/{vin}/telemetry (QoS 0).
//
// Each car also subscribes to v/{vin}/keys (QoS 1, retained by the gateway), stores each newer
// whitelist and acknowledges it on v/{vin}/keys/ack (Car.HandleWhitelist), and, whenever it is
// connected, publishes its journal of local-link decisions on v/{vin}/events (QoS 1), oldest
// first. It deletes an entry only once the gateway acknowledged it on v/{vin}/events/ack (it
// is in the audit log), not when the broker did: a broker restart loses what it held for the
// gateway. Entries journaled while the car was offline go out when it is next online, and
// after every reconnect the car sends again every entry still unacknowledged.
//
// A car whose connection is refused (bad or expired credentials) is reported and counted as
// failed, not retried; a broker that cannot be reached is retried with backoff. On cancel every
// car finishes the command it is executing and publishes its result, then saves its state,
// publishes "offline" and disconnects; Run returns once all of them have. It returns
// ErrNoCarConnected (wrapped) if every car failed for good.
func Run(ctx context.Context, cfg Config) (Stats, error) {
	f, err := New(cfg)
	if err != nil {
		return Stats{}, err
	}
	return f.Run(ctx)
}

// New checks cfg and fills in its defaults; Fleet.Run starts the cars.
func New(cfg Config) (*Fleet, error) {
	if len(cfg.Creds) == 0 {
		return nil, errors.New("run fleet: no cars")
	}
	if cfg.Store == nil {
		return nil, errors.New("run fleet: no store")
	}
	if cfg.BrokerURL == "" {
		return nil, errors.New("run fleet: no broker url")
	}
	if cfg.TelemetryInterval <= 0 {
		cfg.TelemetryInterval = DefaultTelemetryInterval
	}
	if cfg.ConnectRate <= 0 {
		cfg.ConnectRate = DefaultConnectRate
	}
	cfg.Clock = clock.Or(cfg.Clock)
	if cfg.Dial == nil {
		cfg.Dial = dialPaho
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{cfg: cfg, log: cfg.Logger, interval: cfg.TelemetryInterval, journalResend: cfg.JournalResendInterval,
		settled: make(chan struct{})}
	if f.journalResend <= 0 {
		f.journalResend = defaultJournalResend
	}
	return f, nil
}

// Run is the function Run for a fleet New made. A fleet runs once: a second Run fails.
func (f *Fleet) Run(ctx context.Context) (Stats, error) {
	if !f.ran.CompareAndSwap(false, true) {
		return Stats{}, errors.New("run fleet: this fleet has run already (make a new one with fleet.New)")
	}
	var wg sync.WaitGroup
	f.startCars(ctx, &wg)
	wg.Wait()

	st := f.Stats()
	if st.Failed == st.Cars {
		return st, fmt.Errorf("%w: all %d cars failed (first: %s)", ErrNoCarConnected, st.Cars, st.FirstFailure)
	}
	return st, nil
}

// Settled is closed once every car has connected or been given up on.
func (f *Fleet) Settled() <-chan struct{} { return f.settled }

// startCars starts one goroutine per car, at most ConnectRate per second. It returns when all
// are started or ctx ends.
func (f *Fleet) startCars(ctx context.Context, wg *sync.WaitGroup) {
	every := time.Duration(float64(time.Second) / f.cfg.ConnectRate)
	tick := time.NewTicker(max(every, time.Microsecond))
	defer tick.Stop()
	for i, creds := range f.cfg.Creds {
		if i > 0 {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.runCar(ctx, creds)
		}()
	}
}

func (f *Fleet) fail(vin string, err error) {
	f.log.Error("car failed", "vin", vin, "err", err)
	f.mu.Lock()
	if f.firstError == "" {
		f.firstError = fmt.Sprintf("%s: %v", vin, err)
	}
	f.mu.Unlock()
	f.failed.Add(1)
	f.checkSettled()
}

// checkSettled closes settled once every car has either connected or failed.
func (f *Fleet) checkSettled() {
	if int(f.connected.Load()+f.failed.Load()) == len(f.cfg.Creds) {
		f.settleOnce.Do(func() { close(f.settled) })
	}
}

// Stats counts what the fleet did so far.
func (f *Fleet) Stats() Stats {
	f.mu.Lock()
	online := 0
	for _, c := range f.clients {
		if c.Connected() {
			online++
		}
	}
	firstError := f.firstError
	f.mu.Unlock()
	return Stats{
		Cars:          len(f.cfg.Creds),
		Connected:     int(f.connected.Load()),
		Online:        online,
		Failed:        int(f.failed.Load()),
		TelemetrySent: f.telemetry.Load(),
		Executed:      f.exec.Load(),
		Rejected:      f.reject.Load(),
		Whitelists:    f.whitelists.Load(),
		EventsSent:    f.eventsSent.Load(),
		FirstFailure:  firstError,
	}
}

func (f *Fleet) statusPayload(status string) []byte {
	b, _ := json.Marshal(protocol.VehicleStatus{V: protocol.Version, Status: status, TsMs: f.cfg.Clock.Now().UnixMilli()})
	return b
}
