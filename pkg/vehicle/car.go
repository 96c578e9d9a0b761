package vehicle

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"telematics/pkg/clock"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/whitelist"
)

// authorizeCloud is PROTOCOL.md's rule for who may ask for a cloud command: the command is
// signed by a key on the car's whitelist that may, now, be used on the cloud channel for the
// action (whitelist.VerifyCommand), and the gateway's grant names that key's user. A car
// without a whitelist refuses every command (key_unknown), so a stolen gateway key alone
// opens nothing. Refusals: key_unknown, key_revoked, key_expired, signature_invalid, forbidden.
func authorizeCloud(wl *protocol.Whitelist, cmdEnv protocol.Envelope, grant *protocol.Grant, now time.Time) error {
	_, key, err := whitelist.VerifyCommand(wl, cmdEnv, protocol.ChannelCloud, now)
	if err != nil {
		return err
	}
	if grant.User != key.User {
		return protocol.Refuse(protocol.ReasonForbidden, "grant is for user %q, the key belongs to %q", grant.User, key.User)
	}
	return nil
}

// CarStore is the persistence a Car needs; *carstore.Store implements it.
type CarStore interface {
	LoadCar(vin string) (carstore.CarRecord, bool, error)
	SaveCar(vin string, rec carstore.CarRecord) error
	Executed(vin, id string) (bool, error)
	CommitCommand(vin string, c carstore.Commit) error
	LoadKeys(vin string) (carstore.KeyRecord, bool, error)
	SaveKeys(vin string, rec carstore.KeyRecord) error
	AppendJournal(vin string, ev protocol.VehicleEvent) (uint64, error)
	Journal(vin string, afterSeq uint64, max int) ([]protocol.VehicleEvent, error)
	DeleteJournal(vin string, seqs []uint64) error
}

// CarOptions are a car's optional dependencies.
type CarOptions struct {
	// Clock is the car's clock; the real one when nil.
	Clock clock.Clock
	// Logger receives the car's decisions; discarded when nil.
	Logger *slog.Logger
	// Rand drives the motion model; seeded from the VIN and the clock when nil. A Car uses it
	// only under its own lock.
	Rand *rand.Rand
}

// seqBlock is how many telemetry sequence numbers a car reserves with one write: the store
// holds a high-water mark, and a restarted car continues above it, so seq never repeats even
// after a crash, at the cost of a gap, which the gateway recognises (see the protocol constant).
const seqBlock = protocol.TelemetrySeqBlock

// stateSaveInterval is how often a car's motion state is saved while it publishes telemetry;
// commands save it at once.
const stateSaveInterval = time.Minute

// Car is one simulated vehicle. Its methods are safe for concurrent use and serialized: a car
// handles one command (cloud or local), whitelist or telemetry tick at a time, in the order they
// arrive. Only Challenge does not wait for a command in progress.
type Car struct {
	vin   string
	store CarStore
	clock clock.Clock
	log   *slog.Logger

	// nonces are the local link's outstanding challenges: in memory only, so a restarted car
	// knows none of the nonces it issued before.
	nonces nonceTable
	// keys is the whitelist c.wl points to, for Challenge, which must not wait for c.mu (held
	// through a command's fsync).
	keys atomic.Pointer[protocol.Whitelist]
	// linkKey and linkCert are the car's local-link identity (see sign.ProveCar); nil for a
	// car whose credentials carry none, which answers challenges without a proof (and which
	// phones therefore refuse). Set once by NewCar.
	linkKey  ed25519.PrivateKey
	linkCert protocol.Envelope
	// journaled is signalled (capacity 1) whenever a journal entry was written, so whoever
	// publishes the journal (the fleet) need not poll.
	journaled chan struct{}

	mu         sync.Mutex
	state      State
	lastMs     int64 // the time state was advanced to
	seq        uint64
	seqHigh    uint64
	lastSaveMs int64
	rng        *rand.Rand
	// The digital keys: the whitelist (nil until the first one is stored), its version, and
	// the gateway keys the car trusts for whitelists and grants.
	wl        *protocol.Whitelist
	wlVersion uint64
	trusted   []*ecdsa.PublicKey
}

// NewCar loads the car of creds from store, or creates it parked at its home point. The
// credentials must carry the gateway's public key: without it the car cannot verify anything.
// The car's whitelist and trust set come from the store; a car that never received a whitelist
// trusts the credentials' gateway key and refuses every command (key_unknown). Its local-link
// identity (link_key, link_cert) comes from the credentials, which vehicle-sim keeps in its
// store (0600); when present they must belong together and to the VIN.
func NewCar(store CarStore, creds protocol.Credentials, opts CarOptions) (*Car, error) {
	if !protocol.ValidVIN(creds.VIN) {
		return nil, fmt.Errorf("credentials carry a malformed vin %q", creds.VIN)
	}
	if creds.GatewayKey == "" {
		return nil, fmt.Errorf("credentials of %s carry no gateway_key: export them again with `gateway admin vehicle add --json`", creds.VIN)
	}
	key, err := sign.DecodePublic(creds.GatewayKey)
	if err != nil {
		return nil, fmt.Errorf("gateway_key of %s: %w", creds.VIN, err)
	}
	var linkKey ed25519.PrivateKey
	if creds.LinkKey != "" || creds.LinkCert != nil {
		if linkKey, err = sign.LinkIdentity(creds); err != nil {
			return nil, fmt.Errorf("link identity of %s: %w", creds.VIN, err)
		}
	}
	c := &Car{
		vin:       creds.VIN,
		linkKey:   linkKey,
		store:     store,
		clock:     clock.Or(opts.Clock),
		log:       opts.Logger,
		rng:       opts.Rand,
		journaled: make(chan struct{}, 1),
		trusted:   []*ecdsa.PublicKey{key},
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("vin", c.vin)
	if linkKey != nil {
		c.linkCert = *creds.LinkCert
	} else {
		c.log.Warn("credentials carry no link certification: phones will refuse this car on the local link (reissue its credentials)")
	}
	nowMs := c.clock.Now().UnixMilli()
	if c.rng == nil {
		c.rng = rand.New(rand.NewPCG(vinHash(c.vin), uint64(c.clock.Now().UnixNano())))
	}
	rec, found, err := store.LoadCar(c.vin)
	if err != nil {
		return nil, err
	}
	if found {
		if err := json.Unmarshal(rec.State, &c.state); err != nil {
			return nil, fmt.Errorf("load car %s: state: %w", c.vin, err)
		}
	} else {
		c.state = newState(c.vin, nowMs, c.rng)
	}
	c.seq, c.seqHigh = rec.SeqHigh, rec.SeqHigh
	// The time the process was down is not simulated: the car resumes where it stopped.
	c.lastMs, c.lastSaveMs = nowMs, nowMs
	if err := c.loadKeys(); err != nil {
		return nil, err
	}
	return c, nil
}

// loadKeys reads the stored whitelist and trust set. They were verified when they were stored;
// the store is the car's own, so they are not verified again (the key that signed the
// whitelist may no longer be trusted after a rotation).
func (c *Car) loadKeys() error {
	rec, found, err := c.store.LoadKeys(c.vin)
	if err != nil {
		return err
	}
	if len(rec.Trust) > 0 {
		trusted, err := decodeTrust(rec.Trust)
		if err != nil {
			return fmt.Errorf("stored trust set of %s: %w", c.vin, err)
		}
		c.trusted = trusted
	}
	if !found {
		return nil
	}
	doc, err := rec.Envelope.DocBytes()
	if err != nil {
		return fmt.Errorf("stored whitelist of %s: %w", c.vin, err)
	}
	var wl protocol.Whitelist
	if err := json.Unmarshal(doc, &wl); err != nil {
		return fmt.Errorf("stored whitelist of %s: %w", c.vin, err)
	}
	c.wl, c.wlVersion = &wl, rec.Version
	c.keys.Store(&wl)
	return nil
}

func decodeTrust(keys []string) ([]*ecdsa.PublicKey, error) {
	out := make([]*ecdsa.PublicKey, 0, len(keys))
	for _, k := range keys {
		pub, err := sign.DecodePublic(k)
		if err != nil {
			return nil, err
		}
		out = append(out, pub)
	}
	return out, nil
}

// VIN is the car's VIN.
func (c *Car) VIN() string { return c.vin }

// State returns a copy of the car's current state.
func (c *Car) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// advanceTo runs the motion model up to nowMs. The caller holds mu.
func (c *Car) advanceTo(nowMs int64) {
	c.state.advance(c.lastMs, nowMs, c.rng)
	if nowMs > c.lastMs {
		c.lastMs = nowMs
	}
}

// HandleCommand verifies and executes one message from v/{vin}/cmd and returns the result to
// publish on v/{vin}/result. Checks, in order, each refusing with the first reason that applies:
//
//  1. the payload is a bounded, well-formed protocol.VehicleCommand (bad_request);
//  2. the grant verifies with a gateway key the car trusts (signature_invalid; see
//     HandleWhitelist for how the trusted set changes);
//  3. the grant is well-formed (bad_request), names this car and the SHA-256 of the command
//     document's exact bytes (forbidden);
//  4. the command document decodes and passes Command.Check (bad_request);
//  5. the command names this car (forbidden);
//  6. the command has not expired by the car's clock (expired);
//  7. its expires_at lies at most protocol.MaxCommandAheadMs ahead (bad_request: the command
//     asks for a validity the car never grants, so it is malformed rather than stale, and
//     resending it cannot help; a car whose clock is far behind shows up here too);
//  8. the grant has not expired (expired);
//  9. who asked (authorizeCloud: the phone signature, the key on the whitelist, not
//     revoked, valid now, allowed on the cloud channel and for the action, the grant's user
//     the key's user: signature_invalid, key_unknown, key_revoked, key_expired, forbidden);
//  10. the id is not in the persisted replay cache, shared with the local link (duplicate).
//
// An executed command's new state and its replay entry are written in one durable transaction
// before the result is returned, so a result is never published for a command a restarted car
// would execute again. A storage failure refuses the command with internal and changes nothing.
func (c *Car) HandleCommand(payload []byte) protocol.Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	nowMs := now.UnixMilli()
	c.advanceTo(nowMs)

	res := protocol.Result{V: protocol.Version, TsMs: nowMs}
	cmd, err := c.verify(payload, now)
	if cmd != nil {
		res.ID = cmd.ID
	}
	if err == nil {
		var next State
		next, err = c.execute(cmd, nowMs, nil)
		if err == nil {
			c.state = next
			c.lastSaveMs = nowMs
			res.Status = protocol.ResultExecuted
			res.State = next.Signals(cmd.Action == protocol.ActionLocate)
			c.log.Info("command executed", "cmd_id", cmd.ID, "action", cmd.Action)
			return res
		}
	}
	res.Status = protocol.ResultRejected
	res.Reason = protocol.ReasonOf(err)
	res.Message = stateMessage(err)
	if res.Reason == protocol.ReasonInternal {
		c.log.Error("command failed", "cmd_id", res.ID, "reason", res.Reason, "err", err)
	} else {
		c.log.Info("command rejected", "cmd_id", res.ID, "reason", res.Reason, "err", err)
	}
	return res
}

// verify runs checks 1–9 of HandleCommand. The returned command is non-nil as soon as the
// command document decodes, even when a later check fails, so that the result carries its id;
// if an earlier check fails, the id is peeked from the unverified document for the same reason
// (it only labels the refusal).
func (c *Car) verify(payload []byte, now time.Time) (*protocol.Command, error) {
	nowMs := now.UnixMilli()
	var vc protocol.VehicleCommand
	if err := protocol.Decode(payload, &vc); err != nil {
		return nil, err
	}
	if vc.V != protocol.Version {
		return peekCommand(vc.Command), protocol.Refuse(protocol.ReasonBadRequest, "unsupported version %d", vc.V)
	}
	grantDoc, err := sign.VerifyAny(vc.Grant, c.trusted)
	if err != nil {
		return peekCommand(vc.Command), fmt.Errorf("grant: %w", err)
	}
	var grant protocol.Grant
	if err := protocol.Decode(grantDoc, &grant); err != nil {
		return peekCommand(vc.Command), fmt.Errorf("grant: %w", err)
	}
	if grant.V != protocol.Version || grant.ExpiresAtMs <= 0 {
		return peekCommand(vc.Command), protocol.Refuse(protocol.ReasonBadRequest, "grant: unsupported version or no expires_at")
	}
	cmdDoc, err := vc.Command.DocBytes()
	if err != nil {
		return nil, fmt.Errorf("command: %w", err)
	}
	if grant.VIN != c.vin {
		return peekCommand(vc.Command), protocol.Refuse(protocol.ReasonForbidden, "grant is for another vehicle")
	}
	sum := sha256.Sum256(cmdDoc)
	if grant.CmdSHA256 != hex.EncodeToString(sum[:]) {
		return peekCommand(vc.Command), protocol.Refuse(protocol.ReasonForbidden, "grant is for another command")
	}
	var cmd protocol.Command
	if err := protocol.Decode(cmdDoc, &cmd); err != nil {
		return nil, fmt.Errorf("command: %w", err)
	}
	if err := cmd.Check(); err != nil {
		if !protocol.ValidID(cmd.ID) {
			return nil, err
		}
		return &cmd, err
	}
	if cmd.VIN != c.vin {
		return &cmd, protocol.Refuse(protocol.ReasonForbidden, "command is for another vehicle")
	}
	if err := checkExpiry(&cmd, nowMs); err != nil {
		return &cmd, err
	}
	if nowMs > grant.ExpiresAtMs {
		return &cmd, protocol.Refuse(protocol.ReasonExpired, "grant expired %d ms ago", nowMs-grant.ExpiresAtMs)
	}
	if err := authorizeCloud(c.wl, vc.Command, &grant, now); err != nil {
		return &cmd, err
	}
	if err := c.checkReplay(cmd.ID); err != nil {
		return &cmd, err
	}
	return &cmd, nil
}

// checkExpiry applies the car's clock to a command's expiry: not past (expired), and at most
// protocol.MaxCommandAheadMs ahead (bad_request: the command asks for a validity the car never
// grants, so it is malformed rather than stale, and resending it cannot help).
func checkExpiry(cmd *protocol.Command, nowMs int64) error {
	switch {
	case nowMs > cmd.ExpiresAtMs:
		return protocol.Refuse(protocol.ReasonExpired, "command expired %d ms ago", nowMs-cmd.ExpiresAtMs)
	case cmd.ExpiresAtMs-nowMs > protocol.MaxCommandAheadMs:
		return protocol.Refuse(protocol.ReasonBadRequest, "expires_at is %d ms ahead, at most %d accepted",
			cmd.ExpiresAtMs-nowMs, protocol.MaxCommandAheadMs)
	}
	return nil
}

// checkReplay refuses an id in the persisted replay cache (duplicate).
func (c *Car) checkReplay(id string) error {
	executed, err := c.store.Executed(c.vin, id)
	if err != nil {
		return fmt.Errorf("replay cache: %w", err)
	}
	if executed {
		return protocol.Refuse(protocol.ReasonDuplicate, "command already executed")
	}
	return nil
}

// peekCommand decodes an unverified command document only to label a refusal with its id.
func peekCommand(env protocol.Envelope) *protocol.Command {
	doc, err := env.DocBytes()
	if err != nil {
		return nil
	}
	var cmd protocol.Command
	if protocol.Decode(doc, &cmd) != nil || !protocol.ValidID(cmd.ID) {
		return nil
	}
	return &protocol.Command{ID: cmd.ID}
}

// execute computes the state cmd leaves the car in and commits it with the replay entry and,
// when ev is set, the journal entry. The car's state is not touched here: the caller adopts the
// returned state only after the commit.
func (c *Car) execute(cmd *protocol.Command, nowMs int64, ev *protocol.VehicleEvent) (State, error) {
	next := c.state
	switch cmd.Action {
	case protocol.ActionLock:
		next.Locked = true
	case protocol.ActionUnlock:
		next.Locked = false
	case protocol.ActionOpenTrunk:
		// The trunk interlock: no car releases its trunk while it moves.
		if next.SpeedKmh > 0 {
			return State{}, refuseForState("the trunk cannot open while the car moves")
		}
		next.TrunkOpen = true
	case protocol.ActionClimateOn:
		next.Climate = true
	case protocol.ActionClimateOff:
		next.Climate = false
	case protocol.ActionChargeStart:
		if next.Driving {
			// The driver pulls over at a charger; the car plugs in once parked.
			next.endTrip(nowMs)
			next.PlugInOnPark = true
		} else if next.SoCPercent < 100 {
			next.Charging = true
		}
	case protocol.ActionChargeStop:
		next.Charging = false
		next.PlugInOnPark = false
	case protocol.ActionRemoteStart:
		if !next.Driving {
			next.Running = true
			next.Climate = true
			next.RemoteStartUntilMs = nowMs + remoteStartDuration.Milliseconds()
		}
	case protocol.ActionHonk, protocol.ActionFlash, protocol.ActionLocate:
		// No state change; locate's result carries the position.
	}
	doc, err := json.Marshal(next)
	if err != nil {
		return State{}, fmt.Errorf("encode state of %s: %w", c.vin, err)
	}
	commit := carstore.Commit{ID: cmd.ID, ExpiresAtMs: cmd.ExpiresAtMs, NowMs: nowMs, State: doc, Event: ev}
	if err := c.store.CommitCommand(c.vin, commit); err != nil {
		if errors.Is(err, carstore.ErrDuplicate) {
			return State{}, &protocol.Refusal{Reason: protocol.ReasonDuplicate, Err: err}
		}
		return State{}, err
	}
	return next, nil
}

// NextTelemetry advances the car to now and returns its next telemetry message, with a
// sequence number above every one it published before, restarts included. It fails (and the
// message must not be sent) only when the store cannot reserve sequence numbers.
func (c *Car) NextTelemetry() (protocol.Telemetry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	nowMs := c.clock.Now().UnixMilli()
	c.advanceTo(nowMs)
	seq := c.seq + 1
	switch {
	case seq > c.seqHigh:
		high := seq + seqBlock - 1
		if err := c.saveRecord(high); err != nil {
			return protocol.Telemetry{}, fmt.Errorf("reserve telemetry sequence: %w", err)
		}
		c.seqHigh, c.lastSaveMs = high, nowMs
	case nowMs-c.lastSaveMs >= stateSaveInterval.Milliseconds():
		if err := c.saveRecord(c.seqHigh); err != nil {
			// Only the position is at stake; the next tick tries again.
			c.log.Warn("save car state", "err", err)
		} else {
			c.lastSaveMs = nowMs
		}
	}
	c.seq = seq
	return protocol.Telemetry{V: protocol.Version, TsMs: nowMs, Seq: seq, Signals: c.state.Signals(true)}, nil
}

// Save durably writes the car's current state, e.g. before the process exits.
func (c *Car) Save() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	nowMs := c.clock.Now().UnixMilli()
	c.advanceTo(nowMs)
	if err := c.saveRecord(c.seqHigh); err != nil {
		return err
	}
	c.lastSaveMs = nowMs
	return nil
}

// saveRecord durably writes the car's state and seqHigh as its sequence high-water mark. The
// caller holds mu.
func (c *Car) saveRecord(seqHigh uint64) error {
	doc, err := json.Marshal(c.state)
	if err != nil {
		return fmt.Errorf("encode state of %s: %w", c.vin, err)
	}
	return c.store.SaveCar(c.vin, carstore.CarRecord{State: doc, SeqHigh: seqHigh})
}
