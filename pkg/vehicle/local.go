package vehicle

import (
	"crypto/rand"
	"slices"
	"sync"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/whitelist"
)

// Bounds of a car's local-link challenges. Challenges are free to ask for, so anyone on the
// link could otherwise make a car hold any number of them, or, with a bound that evicts the
// oldest, push out the challenge a phone is about to sign. So each phone key on the car's
// whitelist has a budget of its own, spent only by requests that key signed (a key id is not
// secret: naming it proves nothing), every other requester (no key id; an unknown, revoked or
// cloud-only one; no, a bad or a replayed signature) shares one small budget, and a full budget
// refuses the request (rate_limited) instead of evicting anything: a stranger's flood never
// touches a challenge issued to a phone, nor that phone's budget.
const (
	// MaxChallengesPerKey is how many unused, unexpired challenges one whitelisted key may hold.
	MaxChallengesPerKey = 4
	// MaxSharedChallenges is how many unused, unexpired challenges requesters the whitelist
	// does not know may hold, together.
	MaxSharedChallenges = 16
	// maxNonceEntries bounds the table, used challenges included (kept until they expire to tell
	// a reused nonce from an unknown one). Only a command signed by a whitelisted key uses a
	// challenge, so what is beyond the pending budgets is its owners' doing; at the bound the
	// oldest used entry goes (its id is in the replay cache all the same).
	maxNonceEntries = 1024
)

// nonceTable holds a car's local-link challenges in issue order. Used nonces are kept until
// they expire or make room, so that presenting one again is told apart (duplicate) from
// presenting one the car never issued or no longer knows (expired).
type nonceTable struct {
	mu      sync.Mutex
	entries []nonceEntry
	// lastSignedMs is, per key, the ts of the newest challenge request the key signed: an
	// older or equal one is a replay (someone who overheard it) and gets the shared budget.
	// Only whitelisted keys with a valid signature get an entry, dropped once its ts is out of
	// the accepted window.
	lastSignedMs map[string]int64
}

type nonceEntry struct {
	nonce string
	// keyID is the whitelisted key the challenge was issued to, whose signature alone may use
	// it; "" for a challenge of the shared budget, which any key may use.
	keyID       string
	expiresAtMs int64
	used        bool
}

// add remembers a new nonce issued to keyID ("" for the shared budget), dropping expired
// entries first, and returns the key it was issued to. keyID's request must have been signed
// at signedMs by that key (checked by the caller): a request not newer than the key's last one
// is a replay and gets the shared budget. It refuses (rate_limited) when the budget is spent,
// and never evicts an unused challenge.
func (t *nonceTable) add(nonce, keyID string, signedMs, expiresAtMs, nowMs int64) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, ts := range t.lastSignedMs {
		if ts < nowMs-protocol.MaxCommandAheadMs {
			delete(t.lastSignedMs, k)
		}
	}
	if keyID != "" {
		if signedMs <= t.lastSignedMs[keyID] {
			keyID = ""
		} else {
			if t.lastSignedMs == nil {
				t.lastSignedMs = map[string]int64{}
			}
			t.lastSignedMs[keyID] = signedMs
		}
	}
	live := t.entries[:0]
	pending := 0
	for _, e := range t.entries {
		if e.expiresAtMs < nowMs {
			continue
		}
		live = append(live, e)
		if !e.used && e.keyID == keyID {
			pending++
		}
	}
	clear(t.entries[len(live):])
	t.entries = live
	budget := MaxChallengesPerKey
	if keyID == "" {
		budget = MaxSharedChallenges
	}
	if pending >= budget {
		if keyID == "" {
			return "", protocol.Refuse(protocol.ReasonRateLimited, "%d challenges for requesters without a signed key id are pending; ask with a request signed by a phone key of this car, or try again in up to %d s", budget, protocol.ChallengeLifetimeMs/1000)
		}
		return "", protocol.Refuse(protocol.ReasonRateLimited, "key %s holds %d unused challenges; use one, or try again in up to %d s", keyID, budget, protocol.ChallengeLifetimeMs/1000)
	}
	if len(t.entries) >= maxNonceEntries {
		i := slices.IndexFunc(t.entries, func(e nonceEntry) bool { return e.used })
		if i < 0 {
			return "", protocol.Refuse(protocol.ReasonRateLimited, "too many challenges pending; try again in up to %d s", protocol.ChallengeLifetimeMs/1000)
		}
		t.entries = slices.Delete(t.entries, i, i+1)
	}
	t.entries = append(t.entries, nonceEntry{nonce: nonce, keyID: keyID, expiresAtMs: expiresAtMs})
	return keyID, nil
}

// use marks nonce used by a command that keyID signed. Refusals: expired (unknown to this
// car, or past its lifetime), forbidden (issued to another key), duplicate (used before).
func (t *nonceTable) use(nonce, keyID string, nowMs int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.entries {
		e := &t.entries[i]
		if e.nonce != nonce {
			continue
		}
		switch {
		case nowMs > e.expiresAtMs:
			return protocol.Refuse(protocol.ReasonExpired, "challenge expired %d ms ago", nowMs-e.expiresAtMs)
		case e.keyID != "" && e.keyID != keyID:
			return protocol.Refuse(protocol.ReasonForbidden, "challenge was issued to another key")
		case e.used:
			return protocol.Refuse(protocol.ReasonDuplicate, "challenge already used")
		}
		e.used = true
		return nil
	}
	return protocol.Refuse(protocol.ReasonExpired, "challenge unknown to this car (never issued here, or issued before a restart)")
}

// Challenge issues a local-link challenge: a random 16-byte nonce, single use, valid for
// protocol.ChallengeLifetimeMs, to the phone key req.KeyID when that key may use the local link
// on this car now and signed req (see protocol.ChallengeRequest; then only its signature can
// use the nonce, and it comes out of the key's own budget), else out of the shared budget. A spent
// budget is refused with rate_limited (see MaxChallengesPerKey). Nonces live in memory only,
// so a restarted car refuses every nonce it issued before. It does not wait for a command in
// progress.
//
// A request with a phone nonce (protocol.CheckPhoneNonce; bad_request otherwise) is answered
// with the car's proof of identity (sign.ProveCar) when the car holds a link certification;
// the proof is made only once the budget granted the challenge, so it costs a stranger no
// more than the challenge itself.
func (c *Car) Challenge(req protocol.ChallengeRequest) (protocol.Challenge, error) {
	if req.PhoneNonce != "" {
		if err := protocol.CheckPhoneNonce(req.PhoneNonce); err != nil {
			return protocol.Challenge{}, err
		}
	}
	b := make([]byte, 16)
	rand.Read(b) // never fails (crypto/rand: a failure crashes the program)
	now := c.clock.Now()
	nowMs := now.UnixMilli()
	keyID := req.KeyID
	if !c.signedByLocalKey(req, now) {
		keyID = ""
	}
	ch := protocol.Challenge{
		V:           protocol.Version,
		VIN:         c.vin,
		Nonce:       protocol.EncodeB64(b),
		ExpiresAtMs: nowMs + protocol.ChallengeLifetimeMs,
	}
	var err error
	if ch.KeyID, err = c.nonces.add(ch.Nonce, keyID, req.TsMs, ch.ExpiresAtMs, nowMs); err != nil {
		return protocol.Challenge{}, err
	}
	if req.PhoneNonce != "" && c.linkKey != nil {
		// The proof names the key id as the request gave it, granted or not: the phone checks it
		// against the id it sent.
		if ch.Proof, err = sign.ProveCar(c.linkKey, c.linkCert, req, ch); err != nil {
			return protocol.Challenge{}, err
		}
	}
	return ch, nil
}

// signedByLocalKey reports whether req names a key on the car's whitelist that may be used on
// the local link at now (any action), and carries that key's signature of a time within
// protocol.MaxCommandAheadMs of now.
func (c *Car) signedByLocalKey(req protocol.ChallengeRequest, now time.Time) bool {
	if req.KeyID == "" || req.Sig == "" {
		return false
	}
	if d := req.TsMs - now.UnixMilli(); d > protocol.MaxCommandAheadMs || d < -protocol.MaxCommandAheadMs {
		return false
	}
	wl := c.keys.Load()
	if wl == nil {
		return false
	}
	k, ok := wl.Find(req.KeyID)
	if !ok || whitelist.CheckKey(k, protocol.ChannelLocal, protocol.ActionLocate, now) != nil {
		return false
	}
	pub, err := sign.DecodePublic(k.Pub)
	if err != nil {
		return false
	}
	sig, err := protocol.DecodeB64(req.Sig)
	return err == nil && sign.VerifyRaw(pub, protocol.ChallengeRequestMessage(c.vin, req.KeyID, req.TsMs), sig)
}

// HandleLocal verifies and executes a command that reached the car over the local link, and
// returns the answer. Checks, in order, each refusing with the first reason that applies:
//
//  1. whitelist.VerifyCommand on the local channel: the document is a well-formed command
//     (bad_request), signed (signature_invalid) by a key on the car's whitelist (key_unknown;
//     every command while the car has no whitelist), not revoked (key_revoked), valid now
//     (key_expired), allowed on the local link and for the action (forbidden);
//  2. the command names this car (forbidden);
//  3. it carries a nonce (bad_request) that this car issued and that has not expired
//     (expired) and was not used before (duplicate); the nonce is used up from here on, whatever
//     the outcome;
//  4. its expiry: not past (expired), at most protocol.MaxCommandAheadMs ahead (bad_request);
//  5. the id is not in the persisted replay cache, shared with the cloud path (duplicate).
//
// An executed command changes the car exactly like a cloud command, one at a time with the
// car's other work, and its state, replay entry and journal entry are written in one durable
// transaction before the answer. A refusal is journaled too (its own transaction; beyond
// carstore.MaxJournalEntries it is counted in a summary entry). Journal entries name the key, user, action, status and reason; never a
// signature or a nonce.
func (c *Car) HandleLocal(req protocol.LocalRequest) protocol.Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	nowMs := now.UnixMilli()
	c.advanceTo(nowMs)

	res := protocol.Result{V: protocol.Version, TsMs: nowMs}
	ev := protocol.VehicleEvent{V: protocol.Version, VIN: c.vin, Kind: protocol.EventLocalCommand, TsMs: nowMs}
	cmd, key, err := c.verifyLocal(req, now)
	// Label the answer and the journal entry with what is known; the key id as presented (the
	// signature may not verify) and the user only as the whitelist knows the key.
	if protocol.ValidID(cmd.ID) {
		res.ID, ev.CmdID = cmd.ID, cmd.ID
	}
	if cmd.Action.Valid() {
		ev.Action = cmd.Action
	}
	if protocol.ValidID(req.Command.KID) {
		ev.KeyID = req.Command.KID
	}
	ev.User = key.User
	if err == nil {
		ev.Status = protocol.ResultExecuted
		var next State
		next, err = c.execute(&cmd, nowMs, &ev)
		if err == nil {
			c.state = next
			c.lastSaveMs = nowMs
			c.signalJournal()
			res.Status = protocol.ResultExecuted
			res.State = next.Signals(cmd.Action == protocol.ActionLocate)
			c.log.Info("local command executed", "cmd_id", cmd.ID, "action", cmd.Action, "key_id", key.ID, "user", key.User)
			return res
		}
	}
	res.Status = protocol.ResultRejected
	res.Reason = protocol.ReasonOf(err)
	res.Message = stateMessage(err)
	ev.Status, ev.Reason = protocol.ResultRejected, res.Reason
	if res.Reason == protocol.ReasonInternal {
		c.log.Error("local command failed", "cmd_id", res.ID, "reason", res.Reason, "err", err)
	} else {
		c.log.Info("local command rejected", "cmd_id", res.ID, "key_id", ev.KeyID, "reason", res.Reason, "err", err)
	}
	if seq, jerr := c.store.AppendJournal(c.vin, ev); jerr != nil {
		c.log.Error("journal local refusal", "cmd_id", res.ID, "err", jerr)
	} else {
		if seq == 0 {
			c.log.Warn("journal full: local refusal counted in a summary entry", "cmd_id", res.ID, "key_id", ev.KeyID, "reason", res.Reason)
		}
		c.signalJournal()
	}
	return res
}

// verifyLocal runs checks 1–5 of HandleLocal. The command and key are returned as far as they
// are known, to label a refusal.
func (c *Car) verifyLocal(req protocol.LocalRequest, now time.Time) (protocol.Command, protocol.WhitelistKey, error) {
	nowMs := now.UnixMilli()
	cmd, key, err := whitelist.VerifyCommand(c.wl, req.Command, protocol.ChannelLocal, now)
	if err != nil {
		if protocol.ReasonOf(err) == protocol.ReasonSignatureInvalid || protocol.ReasonOf(err) == protocol.ReasonKeyUnknown {
			// Whose key was presented is known; that its holder sent this is not.
			key.User = ""
		}
		return cmd, key, err
	}
	if cmd.VIN != c.vin {
		return cmd, key, protocol.Refuse(protocol.ReasonForbidden, "command is for another vehicle")
	}
	if cmd.Nonce == "" {
		return cmd, key, protocol.Refuse(protocol.ReasonBadRequest, "a local command must carry the nonce of a challenge from this car")
	}
	if err := c.nonces.use(cmd.Nonce, req.Command.KID, nowMs); err != nil {
		return cmd, key, err
	}
	if err := checkExpiry(&cmd, nowMs); err != nil {
		return cmd, key, err
	}
	if err := c.checkReplay(cmd.ID); err != nil {
		return cmd, key, err
	}
	return cmd, key, nil
}

// DecodeLocalRequest decodes the body of a local-link command request: bounded, well-formed
// JSON of version 1 carrying a command envelope (bad_request otherwise). What the envelope
// holds is for HandleLocal to judge.
func DecodeLocalRequest(body []byte) (protocol.LocalRequest, error) {
	var req protocol.LocalRequest
	if err := protocol.Decode(body, &req); err != nil {
		return req, err
	}
	if req.V != protocol.Version {
		return req, protocol.Refuse(protocol.ReasonBadRequest, "unsupported version %d", req.V)
	}
	if req.Command.Doc == "" {
		return req, protocol.Refuse(protocol.ReasonBadRequest, "no command")
	}
	return req, nil
}

// signalJournal tells the journal's publisher that there is something new.
func (c *Car) signalJournal() {
	select {
	case c.journaled <- struct{}{}:
	default:
	}
}

// Journaled is signalled whenever the car wrote a journal entry: a car connected to the broker
// then publishes its journal (see Journal).
func (c *Car) Journaled() <-chan struct{} { return c.journaled }

// Journal returns up to max of the car's journal entries with a seq above afterSeq that the
// gateway has not acknowledged, oldest first. They stay in the store, across restarts, until
// JournalAcked removes them.
func (c *Car) Journal(afterSeq uint64, max int) ([]protocol.VehicleEvent, error) {
	return c.store.Journal(c.vin, afterSeq, max)
}

// JournalAcked removes the journal entries the gateway acknowledged (they are in its audit
// log), and signals Journaled: summaries waiting for room may have become entries.
func (c *Car) JournalAcked(seqs []uint64) error {
	if err := c.store.DeleteJournal(c.vin, seqs); err != nil {
		return err
	}
	c.signalJournal()
	return nil
}
