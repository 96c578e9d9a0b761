// Package commands authorizes app requests and routes them to cars and their results back:
// the cloud path of PROTOCOL.md's command lifecycle. Every request gets exactly one terminal
// reply; every decision is in the audit log before the command goes out; commands for one car
// go out in order; nothing is sent after its expiry.
package commands

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/whitelist"
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
	// TwinFlushInterval is how often the in-memory twin is written to bbolt.
	TwinFlushInterval time.Duration
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
	now   func() time.Time
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

	shards []chan request
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed sync.Once
}

type request struct {
	user    string
	session string
	payload []byte
	done    chan struct{} // closed once handled; used by tests and by shutdown draining
}

type pending struct {
	user        string
	session     string
	vin         string
	action      protocol.Action
	expiresAtMs int64
}

// New builds a router. twofa may be nil (no second factor is asked for).
func New(cfg Config, st *store.Store, log *audit.Log, bus mqttc.Client, keys Keys,
	twofa SecondFactor, now func() time.Time, logger *slog.Logger) (*Router, error) {
	if now == nil {
		now = time.Now
	}
	if cfg.Shards <= 0 {
		cfg.Shards = 1
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = 1
	}
	seen, err := st.SeenCommandIDs(now().UnixMilli())
	if err != nil {
		return nil, err
	}
	stored, err := st.LoadTwins()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Router{
		cfg: cfg, store: st, audit: log, bus: bus, twofa: twofa, now: now,
		log: logger, keys: keys, twins: newTwins(stored), rate: newRateLimiter(cfg.RatePerMinute, cfg.RateBurst),
		refusals: newRateLimiter(cfg.RatePerMinute, cfg.RateBurst), throttled: throttled{users: map[string]*throttledRun{}},
		seen: clampSeen(seen, now().UnixMilli()), pending: map[string]*pending{}, ctx: ctx, cancel: cancel,
	}
	r.shards = make([]chan request, cfg.Shards)
	for i := range r.shards {
		r.shards[i] = make(chan request, cfg.QueueDepth)
		r.wg.Add(1)
		go r.work(r.shards[i])
	}
	r.wg.Add(1)
	go r.housekeeping()
	return r, nil
}

// Subscribe registers the router's handlers on the bus.
func (r *Router) Subscribe(ctx context.Context) error {
	subs := []struct {
		filter string
		qos    byte
		h      mqttc.Handler
	}{
		{"app/+/cmd", 1, r.onAppRequest},
		{"v/+/result", 1, r.onResult},
		{"v/+/status", 1, r.onStatus},
		{"v/+/telemetry", 0, r.onTelemetry},
	}
	for _, s := range subs {
		if err := r.bus.Subscribe(ctx, s.filter, s.qos, s.h); err != nil {
			return err
		}
	}
	return nil
}

// Close drains the queued requests, flushes the twin and stops the router's goroutines. It
// does not close the bus or the store, which belong to the caller.
func (r *Router) Close() error {
	r.closed.Do(func() {
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
	r.Submit(user, m.Origin, m.Payload)
}

// stepUpKeySession is the 2FA step-up session of requests whose broker does not name the
// publishing client: the phone key that signed them.
func stepUpKeySession(keyID string) string { return "key:" + keyID }

// Submit queues one app request from user's session (the app's MQTT client id, "" if the
// broker does not say). It blocks while the car's shard is full and returns a channel closed
// once the request has been decided.
func (r *Router) Submit(user, session string, payload []byte) <-chan struct{} {
	req := request{user: user, session: session, payload: payload, done: make(chan struct{})}
	// The shard is chosen by VIN so one car's commands are decided and sent in order. A
	// request too broken to name a VIN goes to shard 0.
	var probe struct {
		Command protocol.Envelope `json:"command"`
	}
	shard := 0
	if len(payload) <= protocol.MaxPayloadBytes && json.Unmarshal(payload, &probe) == nil {
		if doc, err := probe.Command.DocBytes(); err == nil {
			var c struct {
				VIN string `json:"vin"`
			}
			if json.Unmarshal(doc, &c) == nil {
				shard = shardOf(c.VIN, len(r.shards))
			}
		}
	}
	defer func() {
		// A request arriving during shutdown is answered, not lost silently.
		if recover() != nil {
			r.reply(user, protocol.Reply{Status: protocol.ReplyRejected, Reason: protocol.ReasonInternal})
			close(req.done)
		}
	}()
	r.shards[shard] <- req
	return req.done
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

// decide runs the checks of PROTOCOL.md's lifecycle in order and answers with the first reason
// that applies; an accepted command is audited, sent to the car and awaited.
func (r *Router) decide(req request) {
	nowMs := r.now().UnixMilli()
	ev := audit.Event{TsMs: nowMs, Kind: audit.KindCommand, User: req.user, ClientID: req.session}

	var ar protocol.AppRequest
	var cmd protocol.Command
	err := protocol.Decode(req.payload, &ar)
	var doc []byte
	if err == nil {
		doc, err = ar.Command.DocBytes()
	}
	if err == nil {
		err = protocol.Decode(doc, &cmd)
	}
	if err == nil {
		err = cmd.Check()
	}
	// The id is echoed whenever there is one, so the app can match even a bad_request.
	ev.CmdID, ev.VIN, ev.Action = cmd.ID, cmd.VIN, string(cmd.Action)
	if !protocol.ValidID(cmd.ID) {
		ev.CmdID = ""
	}
	// A user whose refusals used up their budget is answered rate_limited before anything
	// else is looked at, written or remembered: a flood of bad requests costs the gateway a
	// decode and a reply each, and one audit record a second per user (throttled.go).
	if !r.refusals.available(req.user, r.now()) {
		r.throttle(req, ev)
		return
	}
	// Everything that can be judged from the request alone is judged before its id is
	// remembered: only a well-formed, signed-looking command that expires within
	// MaxCommandAheadMs costs a remembered id, and then for at most twice that long.
	if err == nil {
		err = checkExpiry(&cmd, nowMs)
	}
	if err == nil {
		err = ar.Command.CheckSignatureShape()
	}
	if err != nil {
		r.refuse(req, ev, cmd, err, false)
		return
	}
	if cmd.User != "" && cmd.User != req.user {
		r.refuse(req, ev, cmd, protocol.Refuse(protocol.ReasonForbidden, "command names user %q, sent by %q", cmd.User, req.user), true)
		return
	}
	if !r.remember(cmd.ID, cmd.ExpiresAtMs) {
		r.refuse(req, ev, cmd, protocol.Refuse(protocol.ReasonDuplicate, "command id seen before"), false)
		return
	}
	if err := r.check(&cmd, nowMs); err != nil {
		r.refuse(req, ev, cmd, err, true)
		return
	}
	// The user holds an active key of the car whose role allows the action, and the command
	// carries that key's signature: the same rule the car applies to its own whitelist.
	_, key, err := whitelist.VerifyCommand(r.keys.Whitelist(cmd.VIN), ar.Command, protocol.ChannelCloud, r.now())
	if err == nil && key.User != req.user {
		err = protocol.Refuse(protocol.ReasonForbidden, "key %s belongs to another user", key.ID)
	}
	if err != nil {
		r.refuse(req, ev, cmd, err, true)
		return
	}
	factors := []string{"token", "key"}
	if r.twofa != nil {
		session := req.session
		if session == "" {
			// A broker that does not say which client published (any broker but the embedded
			// one): the step-up is bound to the phone key whose signature was just verified,
			// that is to the device, whose private key never leaves it. Another device of the
			// same user, with a stolen password or not, has another key and no step-up.
			session = stepUpKeySession(key.ID)
		}
		f, err := r.twofa.Authorize(req.user, session, cmd.Action, ar.TOTP)
		if err != nil {
			r.refuse(req, ev, cmd, err, true)
			return
		}
		factors = append(factors, f...)
	}
	if !r.rate.allow(req.user, r.now()) {
		r.refuse(req, ev, cmd, protocol.Refuse(protocol.ReasonRateLimited, "over %v requests per minute", r.cfg.RatePerMinute), true)
		return
	}
	if !r.twins.online(cmd.VIN) {
		r.refuse(req, ev, cmd, protocol.Refuse(protocol.ReasonVehicleOffline, "car is offline"), true)
		return
	}

	sum, _ := ar.Command.DocSHA256()
	grant, err := r.keys.GrantSigner(cmd.VIN).Seal(protocol.Grant{V: protocol.Version, CmdSHA256: sum, VIN: cmd.VIN,
		User: req.user, Factors: factors, ExpiresAtMs: cmd.ExpiresAtMs})
	if err != nil {
		r.refuse(req, ev, cmd, err, true)
		return
	}
	out, err := json.Marshal(protocol.VehicleCommand{V: protocol.Version, Command: ar.Command, Grant: grant})
	if err != nil {
		r.refuse(req, ev, cmd, err, true)
		return
	}

	// The decision is durable before the command goes out.
	ev.Outcome = protocol.ReplyAccepted
	ev.Detail = "factors=" + joinFactors(factors)
	if err := r.recordDecision(ev, cmd.ID, cmd.ExpiresAtMs); err != nil {
		r.log.Error("audit write failed; command not sent", "cmd_id", cmd.ID, "vin", cmd.VIN, "err", err)
		r.forget(cmd.ID)
		r.reply(req.user, protocol.Reply{ID: cmd.ID, Status: protocol.ReplyFailed, Reason: protocol.ReasonInternal, VIN: cmd.VIN, Action: cmd.Action})
		return
	}
	if r.now().UnixMilli() >= cmd.ExpiresAtMs {
		// Deciding took longer than the command lives: never send a stale command.
		r.terminal(cmd.ID, req.user, cmd.VIN, cmd.Action, protocol.ReplyExpired, protocol.ReasonExpired, nil, 0, "expired before it could be sent")
		return
	}
	r.mu.Lock()
	r.pending[cmd.ID] = &pending{user: req.user, session: req.session, vin: cmd.VIN, action: cmd.Action, expiresAtMs: cmd.ExpiresAtMs}
	r.mu.Unlock()
	r.reply(req.user, protocol.Reply{ID: cmd.ID, Status: protocol.ReplyAccepted, VIN: cmd.VIN, Action: cmd.Action})

	ctx, cancel := context.WithTimeout(r.ctx, time.Until(time.UnixMilli(cmd.ExpiresAtMs)))
	defer cancel()
	if err := r.bus.Publish(ctx, protocol.VehicleTopic(cmd.VIN, protocol.SuffixCmd), 1, false, out); err != nil {
		r.log.Warn("command not delivered to broker", "cmd_id", cmd.ID, "vin", cmd.VIN, "err", err)
		r.finish(cmd.ID, req.user, cmd.VIN, cmd.Action, protocol.ReplyFailed, protocol.ReasonInternal, nil, 0, "publish to car failed: "+err.Error())
	}
}

// checkExpiry refuses a command that has expired or that expires more than
// protocol.MaxCommandAheadMs after nowMs.
func checkExpiry(cmd *protocol.Command, nowMs int64) error {
	if cmd.ExpiresAtMs <= nowMs {
		return protocol.Refuse(protocol.ReasonExpired, "command expired before the gateway saw it")
	}
	if cmd.ExpiresAtMs > nowMs+protocol.MaxCommandAheadMs {
		return protocol.Refuse(protocol.ReasonBadRequest, "expires_at lies more than %d ms ahead", protocol.MaxCommandAheadMs)
	}
	return nil
}

// check runs the checks that need the store: vehicle known.
func (r *Router) check(cmd *protocol.Command, nowMs int64) error {
	_, err := r.store.GetVehicle(cmd.VIN)
	if errors.Is(err, store.ErrNotFound) {
		return protocol.Refuse(protocol.ReasonVehicleUnknown, "no vehicle %s", cmd.VIN)
	}
	return err
}

// refuse audits and answers a rejected request. persistID records the id as used, so a
// replay of the same request is a duplicate even after a restart.
func (r *Router) refuse(req request, ev audit.Event, cmd protocol.Command, err error, persistID bool) {
	r.refusals.allow(req.user, r.now())
	reason := protocol.ReasonOf(err)
	ev.Outcome = protocol.ReplyRejected
	ev.Reason = string(reason)
	if reason == protocol.ReasonInternal {
		r.log.Error("request failed", "user", req.user, "cmd_id", ev.CmdID, "err", err)
	} else {
		r.log.Debug("request rejected", "user", req.user, "cmd_id", ev.CmdID, "vin", ev.VIN, "reason", reason)
	}
	var aerr error
	if persistID && ev.CmdID != "" {
		aerr = r.recordDecision(ev, ev.CmdID, cmd.ExpiresAtMs)
	} else {
		aerr = r.audit.Append(ev)
	}
	if aerr != nil {
		r.log.Error("audit write failed", "cmd_id", ev.CmdID, "err", aerr)
	}
	r.reply(req.user, protocol.Reply{ID: ev.CmdID, Status: protocol.ReplyRejected, Reason: reason, VIN: ev.VIN, Action: protocol.Action(ev.Action)})
}

func (r *Router) recordDecision(ev audit.Event, id string, untilMs int64) error {
	// Ids are remembered past their command's expiry by the car's replay horizon, so no
	// replay of a still-valid command can pass.
	until := untilMs + protocol.MaxCommandAheadMs
	return r.store.Write(func(tx *bolt.Tx) error {
		if err := store.PutCommandID(tx, id, until); err != nil {
			return err
		}
		return audit.AppendTx(tx, ev)
	})
}

// remember marks id as seen; false if it was seen already.
func (r *Router) remember(id string, expiresAtMs int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.seen[id]; dup {
		return false
	}
	r.seen[id] = expiresAtMs + protocol.MaxCommandAheadMs
	return true
}

func (r *Router) forget(id string) {
	r.mu.Lock()
	delete(r.seen, id)
	r.mu.Unlock()
}

func (r *Router) reply(user string, rep protocol.Reply) {
	rep.V = protocol.Version
	rep.TsMs = r.now().UnixMilli()
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

// onResult relays a car's result to the app that asked, once.
func (r *Router) onResult(m mqttc.Message) {
	vin, suffix, ok := protocol.ParseVehicleTopic(m.Topic)
	if !ok || suffix != protocol.SuffixResult {
		return
	}
	var res protocol.Result
	if err := protocol.Decode(m.Payload, &res); err != nil || !protocol.ValidID(res.ID) {
		r.log.Warn("malformed result from car", "vin", vin, "err", err)
		return
	}
	r.mu.Lock()
	p, ok := r.pending[res.ID]
	if ok && p.vin != vin {
		// A car can only answer its own commands.
		ok = false
	}
	r.mu.Unlock()
	if !ok {
		_ = r.audit.Append(audit.Event{TsMs: r.now().UnixMilli(), Kind: audit.KindLate, VIN: vin, CmdID: res.ID,
			Outcome: res.Status, Reason: string(res.Reason), Detail: "result for no pending request"})
		return
	}
	status, reason, message := protocol.ReplyExecuted, protocol.ReasonNone, ""
	switch res.Status {
	case protocol.ResultExecuted:
	case protocol.ResultRejected:
		status, reason = protocol.ReplyRejected, res.Reason
		if !reason.Valid() {
			reason = protocol.ReasonInternal
		}
		if reason == protocol.ReasonForbidden {
			// The car's word on a refusal for its state ("the trunk cannot open while the
			// car moves") reaches the user, bounded and printable.
			message = carMessage(res.Message)
		}
	default:
		status, reason = protocol.ReplyFailed, protocol.ReasonInternal
	}
	r.finishWithMessage(res.ID, p.user, vin, p.action, status, reason, res.State, res.TsMs, message)
}

// carMessage bounds a car's message to protocol.MaxMessageBytes of printable text.
func carMessage(s string) string {
	var b strings.Builder
	for _, c := range s {
		if b.Len()+utf8.RuneLen(c) > protocol.MaxMessageBytes {
			break
		}
		if unicode.IsPrint(c) {
			b.WriteRune(c)
		}
	}
	return b.String()
}

// finishWithMessage is finish for a car's result, with the car's message for the user (also in
// the audit record's detail).
func (r *Router) finishWithMessage(id, user, vin string, action protocol.Action, status string, reason protocol.Reason, state map[string]any, carTsMs int64, message string) {
	r.mu.Lock()
	_, wasPending := r.pending[id]
	delete(r.pending, id)
	r.mu.Unlock()
	if !wasPending {
		return
	}
	detail := ""
	if message != "" {
		detail = "car: " + message
	}
	r.terminalReply(id, user, vin, action, status, reason, state, carTsMs, detail, message)
}

// finish answers a pending request with its terminal reply, at most once. carTsMs is the car's
// result timestamp (0 when the reply does not come from a result).
func (r *Router) finish(id, user, vin string, action protocol.Action, status string, reason protocol.Reason, state map[string]any, carTsMs int64, detail string) {
	r.mu.Lock()
	_, wasPending := r.pending[id]
	delete(r.pending, id)
	r.mu.Unlock()
	if wasPending {
		r.terminal(id, user, vin, action, status, reason, state, carTsMs, detail)
	}
}

// terminal audits and sends a terminal reply.
func (r *Router) terminal(id, user, vin string, action protocol.Action, status string, reason protocol.Reason, state map[string]any, carTsMs int64, detail string) {
	r.terminalReply(id, user, vin, action, status, reason, state, carTsMs, detail, "")
}

// terminalReply is terminal with the car's message for the user.
func (r *Router) terminalReply(id, user, vin string, action protocol.Action, status string, reason protocol.Reason, state map[string]any, carTsMs int64, detail, message string) {
	if err := r.audit.Append(audit.Event{TsMs: r.now().UnixMilli(), Kind: audit.KindResult, User: user, VIN: vin,
		CmdID: id, Action: string(action), Outcome: status, Reason: string(reason), Detail: detail}); err != nil {
		r.log.Error("audit write failed", "cmd_id", id, "err", err)
	}
	r.reply(user, protocol.Reply{ID: id, Status: status, Reason: reason, Message: message, VIN: vin, Action: action, State: state, CarTsMs: carTsMs})
}

// SweepExpired answers "expired" for every request whose car has not answered by its expiry
// plus the grace period, and forgets ids past their replay horizon. The router calls it
// periodically; tests call it after moving their clock.
func (r *Router) SweepExpired() {
	nowMs := r.now().UnixMilli()
	graceMs := r.cfg.ResultGrace.Milliseconds()
	var expired []string
	r.mu.Lock()
	for id, p := range r.pending {
		if nowMs >= p.expiresAtMs+graceMs {
			expired = append(expired, id)
		}
	}
	for id, until := range r.seen {
		if until <= nowMs {
			delete(r.seen, id)
		}
	}
	r.mu.Unlock()
	for _, id := range expired {
		r.mu.Lock()
		p, ok := r.pending[id]
		r.mu.Unlock()
		if ok {
			r.finish(id, p.user, p.vin, p.action, protocol.ReplyExpired, protocol.ReasonExpired, nil, 0, "no result from the car before expiry")
		}
	}
}

func (r *Router) housekeeping() {
	defer r.wg.Done()
	sweep := time.NewTicker(100 * time.Millisecond)
	defer sweep.Stop()
	flushEvery := r.cfg.TwinFlushInterval
	if flushEvery <= 0 {
		flushEvery = time.Second
	}
	flush := time.NewTicker(flushEvery)
	defer flush.Stop()
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-sweep.C:
			r.SweepExpired()
			r.flushThrottled(false)
		case <-flush.C:
			r.flushTwins()
		case <-prune.C:
			nowMs := r.now().UnixMilli()
			if _, err := r.store.PruneCommandIDs(nowMs, nowMs+maxRememberMs); err != nil {
				r.log.Warn("prune command ids", "err", err)
			}
		}
	}
}

func (r *Router) flushTwins() {
	dirty := r.twins.takeDirty()
	if err := r.store.PutTwins(dirty); err != nil {
		r.log.Error("twin flush failed", "err", err, "cars", len(dirty))
		r.twins.markDirty(dirty)
	}
}

// PendingCount is how many accepted requests await a car's result.
func (r *Router) PendingCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

func joinFactors(f []string) string {
	out := ""
	for i, s := range f {
		if i > 0 {
			out += ","
		}
		out += s
	}
	return out
}
