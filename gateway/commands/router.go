// Package commands authorizes app requests and routes them to cars and their results back:
// the cloud path of PROTOCOL.md's command lifecycle. Every request gets exactly one terminal
// reply; every decision is in the audit log before the command goes out; commands for one car
// go out in order; nothing is sent after its expiry.
package commands

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/pkg/clock"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// SecondFactor is the 2FA policy: it decides whether a request needs a second factor and
// verifies a presented code. It returns the factors the grant may name ("totp" when a code or
// a step-up session covered the request).
type SecondFactor interface {
	Authorize(user, session string, action protocol.Action, code string) (factors []string, err error)
}

// Keys is the digital-key registry as the router needs it: each car's current whitelist, and
// the key a grant for that car must be signed with.
type Keys interface {
	Whitelist(vin string) *protocol.Whitelist
	GrantSigner(vin string) *sign.Signer
}

// Config tunes the router.
type Config struct {
	// Shards is how many cars' queues are worked in parallel; a car always maps to one shard,
	// so its commands go out in order.
	Shards int
	// QueueDepth bounds each shard's queue; a full queue pushes back on the broker.
	QueueDepth int
	// ResultGrace is how long after a command's expiry the gateway still waits for the car's
	// result before it answers "expired" (a car never executes after expiry, but its result
	// may be on the wire).
	ResultGrace time.Duration
	// RatePerMinute and RateBurst limit each user's accepted requests and, in a budget of its
	// own, each user's refused ones (0: no limit).
	RatePerMinute float64
	RateBurst     int
	// TwinFlushInterval is how often the in-memory twin is written to bbolt while cars report
	// changes: the first change to a clean twin arms a flush this long after it.
	TwinFlushInterval time.Duration
	// Replica names this router when it is one replica of a cluster (an external broker and
	// the etcd store shared with other replicas): requests and results then come through
	// shared subscriptions and pending commands live in the store (replica.go). "": one
	// gateway, pending commands in memory.
	Replica string
}

// DefaultConfig returns the defaults documented in configs/gateway.yaml.
func DefaultConfig() Config {
	return Config{
		Shards:            64,
		QueueDepth:        256,
		ResultGrace:       time.Second,
		RatePerMinute:     120,
		RateBurst:         30,
		TwinFlushInterval: time.Second,
	}
}

// Router is the gateway's command path.
type Router struct {
	cfg   Config
	store *store.Store
	audit *audit.Log
	bus   mqttc.Client
	keys  Keys
	twofa SecondFactor
	clock clock.Clock
	log   *slog.Logger

	twins *twins
	rate  *rateLimiter
	// refusals is each user's budget of refused requests (the same rate and burst as rate);
	// throttled counts the requests refused for an exhausted budget, audited as summaries.
	refusals  *rateLimiter
	throttled throttled

	mu      sync.Mutex
	seen    map[string]int64 // command id -> remembered until (unix ms)
	pending map[string]*pending
	// sweepAtMs is when one gateway's expiry sweep is armed for (unix ms; 0: not armed): at
	// the earliest deadline it has to meet, so that an idle gateway does not wake for it.
	// armSweep moves it earlier and wakes housekeeping through sweepWake.
	sweepAtMs int64
	sweepWake chan struct{}
	// turnsSweptMs is when a replica last swept the turns (unix ms, its clock).
	turnsSweptMs atomic.Int64
	// flushArmed is set while the twin flush timer runs (or is about to); the first change
	// to a clean twin arms it through flushWake, so a fleet that reports nothing costs no
	// wake-up a second.
	flushArmed atomic.Bool
	flushWake  chan struct{}

	// afterRefusalRecorded, when set (by tests, at any time), runs between the commit of a
	// replica's recorded refusal and its claim; true stops the refusal there, as if the
	// replica died.
	afterRefusalRecorded atomic.Pointer[func(id string) (stop bool)]
	// duringDecision, when set (by tests), runs in each run of a replica's decision
	// transaction once its checks passed, before it commits.
	duringDecision atomic.Pointer[func(id string)]

	shards []chan request
	// The shutdown protocol between Submit and Close, so that no request is sent on a closed
	// shard: stopping is closed when Close begins, so a Submit waiting for room in a full shard
	// gives up; every Submit holds sendMu's read lock while it sends, and Close closes the
	// shards only after it set stopped under the write lock.
	stopping chan struct{}
	sendMu   sync.RWMutex
	stopped  bool // the shards are closed, or about to be
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closed   sync.Once
}

type request struct {
	user    string
	session string
	app     *appRequest   // the payload, decoded once by Submit
	done    chan struct{} // closed once handled; used by tests and by shutdown draining
	// redelivered: the broker sent it with DUP, maybe to another replica before (redelivery.go)
	redelivered bool
	receivedMs  int64 // when the request reached the router (its audit record's "received")
}

// New builds a router on clk (nil: the real clock): expiry, rate windows and the periodic
// sweeps all run on it. twofa may be nil (no second factor is asked for).
func New(cfg Config, st *store.Store, log *audit.Log, bus mqttc.Client, keys Keys,
	twofa SecondFactor, clk clock.Clock, logger *slog.Logger) (*Router, error) {
	clk = clock.Or(clk)
	if cfg.Shards <= 0 {
		cfg.Shards = 1
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = 1
	}
	seen, err := st.SeenCommandIDs(clk.Now().UnixMilli())
	if err != nil {
		return nil, err
	}
	stored, err := st.LoadTwins()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Router{
		cfg: cfg, store: st, audit: log, bus: bus, twofa: twofa, clock: clk,
		log: logger, keys: keys, twins: newTwins(stored), rate: newRateLimiter(cfg.RatePerMinute, cfg.RateBurst),
		refusals: newRateLimiter(cfg.RatePerMinute, cfg.RateBurst), throttled: throttled{users: map[string]*throttledRun{}},
		seen: clampSeen(seen, clk.Now().UnixMilli()), pending: map[string]*pending{}, sweepWake: make(chan struct{}, 1), flushWake: make(chan struct{}, 1), stopping: make(chan struct{}),
		ctx: ctx, cancel: cancel,
	}
	r.shards = make([]chan request, cfg.Shards)
	for i := range r.shards {
		r.shards[i] = make(chan request, cfg.QueueDepth)
		r.wg.Add(1)
		go r.work(r.shards[i])
	}
	r.flushArmed.Store(true) // housekeeping's first flush comes after TwinFlushInterval
	r.wg.Add(1)
	go r.housekeeping()
	return r, nil
}

// Subscribe registers the router's handlers on the bus: requests and results shared among the
// replicas of a cluster, status and telemetry seen by each.
func (r *Router) Subscribe(ctx context.Context) error {
	subs := []struct {
		filter   string
		qos      byte
		h        mqttc.Handler
		ackAfter bool // a replica's: acknowledged once handled (redelivery.go)
	}{
		{r.filter("app/+/cmd", true), 1, r.onAppRequest, true},
		{r.filter("v/+/result", true), 1, r.onResult, true},
		{"v/+/status", 1, r.onStatus, false},
		{"v/+/telemetry", 0, r.onTelemetry, false},
	}
	for _, s := range subs {
		if err := r.subscribe(ctx, s.filter, s.qos, s.h, s.ackAfter); err != nil {
			return err
		}
	}
	return nil
}

// Close drains the queued requests, flushes the twin and stops the router's goroutines. It
// does not close the bus or the store, which belong to the caller. A request submitted while
// or after it closes is decided if it was queued, and refused as Submit says otherwise.
func (r *Router) Close() error {
	r.closed.Do(func() {
		close(r.stopping) // a Submit waiting for room gives up
		r.sendMu.Lock()   // wait out every Submit that is sending
		r.stopped = true
		r.sendMu.Unlock()
		for _, ch := range r.shards {
			close(ch)
		}
		r.cancel()
		r.wg.Wait()
		r.flushTwins()
		r.flushThrottled(true)
	})
	return nil
}

func (r *Router) onAppRequest(m mqttc.Message) {
	user, suffix, ok := protocol.ParseAppTopic(m.Topic)
	if !ok || suffix != protocol.SuffixCmd {
		return
	}
	if r.clustered() {
		r.onReplicaRequest(user, m)
		return
	}
	r.Submit(user, m.Origin, m.Payload)
}

// Submit queues one app request from user's session (the app's MQTT client id, "" if the
// broker does not say). It blocks while the car's shard is full and returns a channel closed
// once the request has been decided. Once Close has begun, a request that is not queued yet is
// answered rejected with reason internal (not audited: it was never decided), and the channel
// is closed at once.
func (r *Router) Submit(user, session string, payload []byte) <-chan struct{} {
	return r.submit(user, session, payload, false)
}

// submit is Submit for a request the broker may have delivered before (redelivered: DUP).
func (r *Router) submit(user, session string, payload []byte, redelivered bool) <-chan struct{} {
	req := request{user: user, session: session, app: decodeAppRequest(payload), redelivered: redelivered, done: make(chan struct{}),
		receivedMs: r.clock.Now().UnixMilli()}
	// The shard is chosen by VIN so one car's commands are decided and sent in order. A
	// request too broken to name a VIN goes to shard 0.
	shard := 0
	if vin := req.app.cmd.VIN; vin != "" {
		shard = shardOf(vin, len(r.shards))
	}
	if !r.enqueue(shard, req) {
		// A request arriving during shutdown is answered, not lost silently.
		r.reply(user, protocol.Reply{Status: protocol.ReplyRejected, Reason: protocol.ReasonInternal})
		close(req.done)
	}
	return req.done
}

// enqueue puts req on its shard's queue, waiting while the queue is full; false once Close has
// begun and req was not queued.
func (r *Router) enqueue(shard int, req request) bool {
	r.sendMu.RLock()
	defer r.sendMu.RUnlock()
	if r.stopped {
		return false
	}
	select {
	case r.shards[shard] <- req:
		return true
	case <-r.stopping:
		return false
	}
}

// shardOf spreads VINs over n shards: FNV-1a of the VIN, inlined (this runs for every message,
// and fnv.New32a allocates).
func shardOf(vin string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(vin); i++ {
		h ^= uint32(vin[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

func (r *Router) work(ch chan request) {
	defer r.wg.Done()
	for req := range ch {
		r.decide(req)
		close(req.done)
	}
}

func (r *Router) reply(user string, rep protocol.Reply) {
	rep.V = protocol.Version
	rep.TsMs = r.clock.Now().UnixMilli()
	b, err := json.Marshal(rep)
	if err != nil {
		r.log.Error("marshal reply", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.bus.Publish(ctx, protocol.AppTopic(user, protocol.SuffixReply), 1, false, b); err != nil {
		r.log.Warn("reply not delivered to broker", "user", user, "cmd_id", rep.ID, "status", rep.Status, "err", err)
	}
}

// sweepInterval is how often a replica answers "expired" for commands whose car did not
// answer in time (SweepExpired): an expiry is reported at most this late. One gateway sweeps
// when its earliest pending command is due instead (armSweep), and every sweepInterval while
// summaries of throttled requests are due.
const sweepInterval = 100 * time.Millisecond

// housekeeping runs the router's periodic work on its clock: the expiry sweep, the twin
// flush and the pruning of remembered command ids.
func (r *Router) housekeeping() {
	defer r.wg.Done()
	// A replica sweeps on a ticker: the store's pending commands are every replica's, and it
	// is not told of the others'. One gateway knows its own and arms a timer for the earliest
	// deadline; the first sweep comes after sweepInterval, as a replica's does.
	var sweepC <-chan time.Time
	var sweepTimer clock.Timer
	if r.clustered() {
		sweep, c := r.clock.NewTicker(sweepInterval)
		defer sweep.Stop()
		sweepC = c
	} else {
		r.mu.Lock()
		r.sweepAtMs = r.clock.Now().Add(sweepInterval).UnixMilli()
		r.mu.Unlock()
		sweep, c := r.clock.NewTimer(sweepInterval)
		defer sweep.Stop()
		sweepTimer, sweepC = sweep, c
	}
	flushEvery := r.cfg.TwinFlushInterval
	if flushEvery <= 0 {
		flushEvery = time.Second
	}
	flush, flushC := r.clock.NewTimer(flushEvery)
	defer flush.Stop()
	prune, pruneC := r.clock.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-sweepC:
			if sweepTimer != nil {
				r.mu.Lock()
				r.sweepAtMs = 0 // fired: what is armed from now on wakes housekeeping
				r.mu.Unlock()
			}
			r.SweepExpired()
			r.flushThrottled(false)
			if sweepTimer != nil {
				r.armSweep(r.nextSweepMs())
			}
		case <-r.sweepWake:
			r.mu.Lock()
			atMs := r.sweepAtMs
			r.mu.Unlock()
			if atMs != 0 && sweepTimer != nil {
				sweepTimer.Reset(time.Duration(atMs-r.clock.Now().UnixMilli()) * time.Millisecond)
			}
		case <-flushC:
			r.flushArmed.Store(false) // a change from now on arms the next flush
			r.flushTwins()
		case <-r.flushWake:
			flush.Reset(flushEvery)
		case <-pruneC:
			r.SweepExpired() // also forgets ids past their horizon, which an idle gateway's sweep does not
			nowMs := r.clock.Now().UnixMilli()
			if _, err := r.store.PruneCommandIDs(nowMs, nowMs+maxRememberMs); err != nil {
				r.log.Warn("prune command ids", "err", err)
			}
		}
	}
}

// armSweep makes one gateway's expiry sweep run by atMs (unix ms on the router's clock; 0:
// nothing to arm). It wakes housekeeping only when atMs is earlier than what is armed, which,
// as commands expire in the order they came, is rarely the case under load.
func (r *Router) armSweep(atMs int64) {
	if atMs == 0 || r.clustered() {
		return
	}
	r.mu.Lock()
	wake := r.sweepAtMs == 0 || atMs < r.sweepAtMs
	if wake {
		r.sweepAtMs = atMs
	}
	r.mu.Unlock()
	if wake {
		select {
		case r.sweepWake <- struct{}{}:
		default: // housekeeping has a wake-up coming and reads sweepAtMs then
		}
	}
}

// nextSweepMs is when one gateway's sweep next has work: the earliest expiry plus grace of a
// pending command, or a throttled user's summary (0: nothing).
func (r *Router) nextSweepMs() int64 {
	graceMs := r.cfg.ResultGrace.Milliseconds()
	at := r.throttledDueMs()
	r.mu.Lock()
	for _, p := range r.pending {
		if d := p.expiresAtMs + graceMs; at == 0 || d < at {
			at = d
		}
	}
	r.mu.Unlock()
	return at
}

func (r *Router) flushTwins() {
	dirty := r.twins.takeDirty()
	if err := r.store.PutTwins(dirty); err != nil {
		r.log.Error("twin flush failed", "err", err, "cars", len(dirty))
		r.twins.markDirty(dirty)
		r.armFlush()
	}
}

// armFlush makes the twin flush run TwinFlushInterval from now, unless it is armed already.
func (r *Router) armFlush() {
	if r.flushArmed.Load() || !r.flushArmed.CompareAndSwap(false, true) {
		return
	}
	select {
	case r.flushWake <- struct{}{}:
	default:
	}
}
