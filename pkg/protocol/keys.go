package protocol

import "fmt"

// Channels a digital key may be used on.
const (
	ChannelCloud = "cloud" // commands through the gateway and the broker
	ChannelLocal = "local" // the short-range link (simulated BLE/NFC), no network involved
)

// WhitelistKey is one phone key on a car's whitelist.
type WhitelistKey struct {
	ID          string   `json:"id"`  // sign.KeyID of Pub
	Pub         string   `json:"pub"` // base64url DER (SPKI) of the P-256 public key
	User        string   `json:"user"`
	Role        Role     `json:"role"`
	Channels    []string `json:"channels"`
	NotBeforeMs int64    `json:"not_before,omitempty"` // 0: no lower bound
	NotAfterMs  int64    `json:"not_after,omitempty"`  // 0: no upper bound
	Label       string   `json:"label,omitempty"`
	RevokedAtMs int64    `json:"revoked_at,omitempty"` // set: the key is revoked (kept so the car can say so)
}

// AllowsChannel reports whether the key may be used on channel ch.
func (k WhitelistKey) AllowsChannel(ch string) bool {
	for _, c := range k.Channels {
		if c == ch {
			return true
		}
	}
	return false
}

// Whitelist is the document the gateway signs for one car and publishes, retained, on
// v/{vin}/keys. A car accepts it only if a gateway key it trusts signed it, it names the car,
// and its version is higher than the one stored (no rollback).
type Whitelist struct {
	V          int            `json:"v"`
	VIN        string         `json:"vin"`
	Version    uint64         `json:"version"`
	IssuedAtMs int64          `json:"issued_at"`
	Keys       []WhitelistKey `json:"keys"`
	// Trust, when present, is the set of gateway public keys (base64url DER) the car trusts
	// from this version on: this is how a gateway signing-key rotation reaches cars without
	// re-provisioning them. The document itself must be signed by a key the car already trusts.
	Trust []string `json:"trust,omitempty"`
}

// Find returns the key with id.
func (w *Whitelist) Find(id string) (WhitelistKey, bool) {
	for _, k := range w.Keys {
		if k.ID == id {
			return k, true
		}
	}
	return WhitelistKey{}, false
}

// KeysAck is what a car publishes on v/{vin}/keys/ack once it stored a whitelist version.
type KeysAck struct {
	V       int    `json:"v"`
	VIN     string `json:"vin"`
	Version uint64 `json:"version"`
	TsMs    int64  `json:"ts"`
}

// ChallengeRequest is the optional body of POST /v1/link/{vin}/challenge: the id of the phone
// key that will sign the command, with that key's signature (Sig, base64url r||s) over
// ChallengeRequestMessage(vin, KeyID, TsMs). A car gives each key on its whitelist a budget of
// its own and binds the challenge to it, but only for a request the key signed, with a TsMs
// newer than that of the key's last such request and within MaxCommandAheadMs of the car's
// clock: a key id is not secret, and whoever names it without the key must not spend its
// budget. Any other request (no key id, an unknown one, no or a bad signature, a replayed one)
// comes out of a small budget shared by every such requester.
//
// PhoneNonce (16 to 32 random bytes, base64url) asks the car to prove itself: the Challenge then
// carries Proof (see CarProof). Phones always send one; a request without one gets no proof.
type ChallengeRequest struct {
	V          int    `json:"v"`
	KeyID      string `json:"key_id,omitempty"`
	TsMs       int64  `json:"ts,omitempty"`
	Sig        string `json:"sig,omitempty"`
	PhoneNonce string `json:"phone_nonce,omitempty"`
}

// ChallengeRequestMessage is what a phone key signs to ask car vin for a challenge of its own
// budget at tsMs (unix ms).
func ChallengeRequestMessage(vin, keyID string, tsMs int64) []byte {
	return fmt.Appendf(nil, "telematics local-link challenge v1\n%s\n%s\n%d", vin, keyID, tsMs)
}

// Challenge is the local link's answer to POST /v1/link/{vin}/challenge: a single-use nonce,
// valid until ExpiresAtMs (10 s), usable only by a command signed by KeyID when that is set.
// Proof is the car's proof of identity for the request's PhoneNonce (absent without one, or
// from a car that holds no link certification, which a phone refuses).
type Challenge struct {
	V           int       `json:"v"`
	VIN         string    `json:"vin"`
	Nonce       string    `json:"nonce"`
	ExpiresAtMs int64     `json:"expires_at"`
	KeyID       string    `json:"key_id,omitempty"`
	Proof       *CarProof `json:"proof,omitempty"`
}

// LocalRequest is the body of POST /v1/link/{vin}/command: a command signed by the phone key,
// carrying the challenge's nonce. The answer is a Result.
type LocalRequest struct {
	V       int      `json:"v"`
	Command Envelope `json:"command"`
}

// DefaultLinkAddr is where vehicle-sim serves its cars' local link and where the app looks for
// it, unless told otherwise (being able to reach it stands for being next to the car).
const DefaultLinkAddr = "127.0.0.1:1884"

// ChallengeLifetimeMs is how long a local-link nonce stays valid.
const ChallengeLifetimeMs = 10_000

// Vehicle event kinds on v/{vin}/events.
const (
	EventLocalCommand = "local_command"
)

// VehicleEvent is one entry of a car's journal, published on v/{vin}/events when the car is
// online; the gateway files it in its audit log and acknowledges it on v/{vin}/events/ack
// (EventsAck), and only then does the car delete it. Seq increases per car, so the gateway can
// ignore a redelivered entry.
//
// An entry with Count above 1 is a summary: a car whose journal was full (too many refusals
// not yet acknowledged) counts each further refusal into one entry per key id and reason
// instead of dropping it; FirstTsMs and TsMs are the first and last of them.
type VehicleEvent struct {
	V      int    `json:"v"`
	VIN    string `json:"vin"`
	Seq    uint64 `json:"seq"`
	Kind   string `json:"kind"`
	CmdID  string `json:"cmd_id,omitempty"`
	KeyID  string `json:"key_id,omitempty"`
	User   string `json:"user,omitempty"`
	Action Action `json:"action,omitempty"`
	Status string `json:"status,omitempty"`
	Reason Reason `json:"reason,omitempty"`
	TsMs   int64  `json:"ts"`
	// Count is how many decisions the entry stands for; absent (0) means one.
	Count     int   `json:"count,omitempty"`
	FirstTsMs int64 `json:"first_ts,omitempty"`
}

// EventsAck is what the gateway publishes on v/{vin}/events/ack once the journal entries
// with the given seqs are in its audit log (newly filed or filed before). A car keeps each
// entry until it is acknowledged, across restarts of itself, the broker and the gateway.
type EventsAck struct {
	V    int      `json:"v"`
	VIN  string   `json:"vin"`
	Seqs []uint64 `json:"seqs"`
}
