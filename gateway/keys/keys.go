// Package keys is the gateway's digital-key registry: the phone keys paired with each car, the
// terms owners share a car on, and each car's signed, versioned whitelist, which is published
// retained on v/{vin}/keys and acknowledged by the car. Every key change needs the user's
// second factor and is audited in the same transaction that makes it.
package keys

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/whitelist"
)

var (
	bucketKeys       = []byte("keys")       // vin/keyID -> protocol.WhitelistKey
	bucketShares     = []byte("shares")     // vin/user -> Share
	bucketWhitelists = []byte("whitelists") // vin -> record
	bucketJournal    = []byte("journal")    // vin/seq -> filed vehicle events
)

// Key-change actions: the 2FA policy's names for them.
const (
	ActionPair   = twofa.ActionKeyPair
	ActionShare  = twofa.ActionKeyShare
	ActionRevoke = twofa.ActionKeyRevoke
)

// SecondFactor checks the code a key change carries. It must refuse (totp_required,
// totp_enrollment_required, …) unless the user proved a second factor now or in this session.
type SecondFactor interface {
	RequireForKeyChange(user, session, action, code string) error
}

// KeyRing holds the gateway's signing keys: the current one, and during a rotation the
// previous one, which cars that have not yet learned the new key still trust.
type KeyRing interface {
	Current() *sign.Signer
	Previous() *sign.Signer // nil when no rotation is under way
}

// Share is what an owner granted another user on one car.
type Share struct {
	VIN        string        `json:"vin"`
	User       string        `json:"user"`
	Role       protocol.Role `json:"role"`
	NotAfterMs int64         `json:"not_after,omitempty"`
	Channels   []string      `json:"channels"`
	By         string        `json:"by"`
	CreatedMs  int64         `json:"created"`
}

// record is a car's whitelist state at the gateway.
type record struct {
	Version      uint64            `json:"version"`
	AckedVersion uint64            `json:"acked_version"`
	AckedMs      int64             `json:"acked_ts,omitempty"`
	Envelope     protocol.Envelope `json:"envelope"`
	// TrustFrom is the first version that named TrustKID, the gateway's current signing key,
	// in its trust list; once the car acknowledged it, the car trusts that key and grants and
	// whitelists for it are signed with it. A rotation makes a new current key, so the hop
	// starts again for every car, also one that made the hop of an earlier rotation.
	TrustFrom uint64 `json:"trust_from,omitempty"`
	TrustKID  string `json:"trust_kid,omitempty"`
	// RetireOnAck is the version of a decommissioned car's empty whitelist: once the car
	// acknowledged it, its credentials are retired (0: nothing to do).
	RetireOnAck uint64 `json:"retire_on_ack,omitempty"`
	// Retired is set once the car's credentials were retired: it cannot connect, so it is no
	// longer waited for (rotation, unacknowledged whitelists).
	Retired bool `json:"retired,omitempty"`
}

// trusts reports whether the car is known to trust the signing key kid.
func (r record) trusts(kid string) bool {
	return r.TrustKID == kid && r.TrustFrom != 0 && r.AckedVersion >= r.TrustFrom
}

// Status is what an owner and the admin API see of a car's whitelist.
type Status struct {
	VIN          string                  `json:"vin"`
	Version      uint64                  `json:"version"`
	AckedVersion uint64                  `json:"acked_version"`
	AckedMs      int64                   `json:"acked_ts,omitempty"`
	InSync       bool                    `json:"in_sync"`
	Keys         []protocol.WhitelistKey `json:"keys"`
}

// Service is the key registry.
type Service struct {
	db   *bolt.DB
	st   *store.Store
	ring KeyRing
	bus  mqttc.Client
	tfa  SecondFactor
	now  func() time.Time
	log  *slog.Logger
	// carMu serializes the key changes of one car and their publication (striped by VIN), so
	// its versions rise without gaps and the retained whitelist on the broker is always its
	// newest. Changes of different cars run side by side and share commits.
	carMu [64]sync.Mutex
	mu    sync.RWMutex                   // guards cache and recs
	cache map[string]*protocol.Whitelist // vin -> current whitelist document
	recs  map[string]record
	// CredentialsRetired is told a decommissioned car's new token id once its credentials
	// were retired (recorded in the store in the same transaction), so the broker refuses
	// every token the car holds. Set it before Subscribe; nil: nobody is told.
	CredentialsRetired func(vin, jti string)
}

// New opens the registry's buckets and loads every car's current whitelist.
func New(st *store.Store, ring KeyRing, bus mqttc.Client, tfa SecondFactor, now func() time.Time, log *slog.Logger) (*Service, error) {
	s := &Service{db: st.DB(), st: st, ring: ring, bus: bus, tfa: tfa, now: now, log: log,
		cache: map[string]*protocol.Whitelist{}, recs: map[string]record{}}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketKeys, bucketShares, bucketWhitelists, bucketJournal} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketWhitelists).ForEach(func(k, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("whitelist record of %s: %w", k, err)
			}
			doc, err := r.Envelope.DocBytes()
			if err != nil {
				return err
			}
			var wl protocol.Whitelist
			if err := json.Unmarshal(doc, &wl); err != nil {
				return err
			}
			s.cache[string(k)] = &wl
			s.recs[string(k)] = r
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("open key registry: %w", err)
	}
	return s, nil
}

// Whitelist returns a car's current whitelist (nil if it has none).
func (s *Service) Whitelist(vin string) *protocol.Whitelist {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cache[vin]
}

// GrantSigner is the key a grant for vin must be signed with: the current key once the car
// trusts it, the previous key while a rotation has not reached the car. It is also the key a
// car's credentials name, so that a car provisioned during a rotation trusts what its first
// whitelist is signed with, and then makes the hop like every other car.
func (s *Service) GrantSigner(vin string) *sign.Signer {
	cur, prev := s.ring.Current(), s.ring.Previous()
	if prev == nil {
		return cur
	}
	s.mu.RLock()
	r := s.recs[vin]
	s.mu.RUnlock()
	if r.trusts(cur.KID()) {
		return cur
	}
	return prev
}

func keyOf(vin, id string) []byte { return []byte(vin + "/" + id) }

// Pair registers a phone's public key for user on vin with the role the user holds there.
func (s *Service) Pair(ctx context.Context, user, session, vin, pubB64, label, code string) (protocol.WhitelistKey, error) {
	if !protocol.ValidVIN(vin) {
		return protocol.WhitelistKey{}, protocol.Refuse(protocol.ReasonBadRequest, "%q is not a VIN", vin)
	}
	if len(label) > 64 {
		return protocol.WhitelistKey{}, protocol.Refuse(protocol.ReasonBadRequest, "label longer than 64 characters")
	}
	pub, err := sign.DecodePublic(pubB64)
	if err != nil {
		return protocol.WhitelistKey{}, protocol.Refuse(protocol.ReasonBadRequest, "public_key: %v", err)
	}
	v, err := s.vehicle(vin)
	if err != nil {
		return protocol.WhitelistKey{}, err
	}
	if _, ok := v.Users[user]; !ok {
		return protocol.WhitelistKey{}, protocol.Refuse(protocol.ReasonForbidden, "you hold no role on %s: its owner must share it with you", vin)
	}
	if err := s.tfa.RequireForKeyChange(user, session, ActionPair, code); err != nil {
		return protocol.WhitelistKey{}, err
	}
	id := sign.KeyID(pub)
	var out protocol.WhitelistKey
	_, err = s.change(ctx, vin, func(tx *bolt.Tx, nowMs int64) (audit.Event, error) {
		kb := tx.Bucket(bucketKeys)
		if kb.Get(keyOf(vin, id)) != nil {
			return audit.Event{}, protocol.Refuse(protocol.ReasonDuplicate, "this phone key is already paired with %s", vin)
		}
		// The role again, under the car's lock: an owner or the admin may have removed the
		// user since the check above, and a removed user must not get a key.
		v, err := store.GetVehicleTx(tx, vin)
		if err != nil {
			return audit.Event{}, err
		}
		role, ok := v.Users[user]
		if !ok {
			return audit.Event{}, protocol.Refuse(protocol.ReasonForbidden, "you hold no role on %s: its owner must share it with you", vin)
		}
		k := protocol.WhitelistKey{ID: id, Pub: pubB64, User: user, Role: role, NotBeforeMs: nowMs,
			Channels: []string{protocol.ChannelCloud, protocol.ChannelLocal}, Label: label}
		if b := tx.Bucket(bucketShares).Get(keyOf(vin, user)); b != nil {
			var sh Share
			if err := json.Unmarshal(b, &sh); err != nil {
				return audit.Event{}, err
			}
			if sh.NotAfterMs != 0 && sh.NotAfterMs <= nowMs {
				return audit.Event{}, protocol.Refuse(protocol.ReasonForbidden, "your share of %s ended at %s: its owner must share it with you again",
					vin, time.UnixMilli(sh.NotAfterMs).UTC().Format(time.RFC3339))
			}
			k.NotAfterMs, k.Channels = sh.NotAfterMs, sh.Channels
		}
		b, err := json.Marshal(k)
		if err != nil {
			return audit.Event{}, err
		}
		out = k
		return audit.Event{Kind: audit.KindKeys, User: user, ClientID: session, VIN: vin, Outcome: "paired",
			Detail: fmt.Sprintf("key=%s role=%s", k.ID, k.Role)}, kb.Put(keyOf(vin, k.ID), b)
	})
	return out, err
}

// ShareRequest is what an owner gives another user.
type ShareRequest struct {
	VIN        string        `json:"vin"`
	User       string        `json:"user"`
	Role       protocol.Role `json:"role"`
	NotAfterMs int64         `json:"not_after,omitempty"`
	Channels   []string      `json:"channels,omitempty"`
	TOTP       string        `json:"totp,omitempty"`
}

// Share lets another user pair their own phone key with owner's car, as driver or valet,
// optionally until a time and on some channels only.
func (s *Service) Share(ctx context.Context, owner, session string, r ShareRequest) (Share, error) {
	if !protocol.ValidVIN(r.VIN) || !protocol.ValidUser(r.User) {
		return Share{}, protocol.Refuse(protocol.ReasonBadRequest, "need a VIN and a user name")
	}
	if r.Role != protocol.RoleDriver && r.Role != protocol.RoleValet {
		return Share{}, protocol.Refuse(protocol.ReasonBadRequest, "a shared key's role is driver or valet, not %q", r.Role)
	}
	if len(r.Channels) == 0 {
		r.Channels = []string{protocol.ChannelCloud, protocol.ChannelLocal}
	}
	for _, c := range r.Channels {
		if c != protocol.ChannelCloud && c != protocol.ChannelLocal {
			return Share{}, protocol.Refuse(protocol.ReasonBadRequest, "channel %q is not cloud or local", c)
		}
	}
	if r.NotAfterMs != 0 && r.NotAfterMs <= s.now().UnixMilli() {
		return Share{}, protocol.Refuse(protocol.ReasonBadRequest, "not_after lies in the past")
	}
	if r.User == owner {
		return Share{}, protocol.Refuse(protocol.ReasonBadRequest, "you cannot share a car with yourself")
	}
	v, err := s.vehicle(r.VIN)
	if err != nil {
		return Share{}, err
	}
	if v.Users[owner] != protocol.RoleOwner {
		return Share{}, protocol.Refuse(protocol.ReasonForbidden, "only an owner of %s shares it", r.VIN)
	}
	if _, err := s.st.GetUser(r.User); err != nil {
		return Share{}, protocol.Refuse(protocol.ReasonBadRequest, "no user %q", r.User)
	}
	if v.Users[r.User] == protocol.RoleOwner {
		return Share{}, protocol.Refuse(protocol.ReasonBadRequest, "%s is an owner of %s already", r.User, r.VIN)
	}
	if err := s.tfa.RequireForKeyChange(owner, session, ActionShare, r.TOTP); err != nil {
		return Share{}, err
	}
	sh := Share{VIN: r.VIN, User: r.User, Role: r.Role, NotAfterMs: r.NotAfterMs, Channels: r.Channels, By: owner}
	// One transaction, under the car's lock: the role, the share, the user's keys already
	// paired with the car (a share changed later, a downgrade included, reaches them and the
	// car with the new whitelist version) and the audit record.
	_, err = s.change(ctx, r.VIN, func(tx *bolt.Tx, nowMs int64) (audit.Event, error) {
		sh.CreatedMs = nowMs
		// The roles again, under the car's lock: the admin may have changed them since.
		v, err := store.GetVehicleTx(tx, r.VIN)
		if err != nil {
			return audit.Event{}, err
		}
		if v.Users[owner] != protocol.RoleOwner {
			return audit.Event{}, protocol.Refuse(protocol.ReasonForbidden, "only an owner of %s shares it", r.VIN)
		}
		if v.Users[r.User] == protocol.RoleOwner {
			return audit.Event{}, protocol.Refuse(protocol.ReasonBadRequest, "%s is an owner of %s already", r.User, r.VIN)
		}
		if err := store.AssignTx(tx, r.VIN, r.User, r.Role); err != nil {
			return audit.Event{}, err
		}
		b, err := json.Marshal(sh)
		if err != nil {
			return audit.Event{}, err
		}
		if err := tx.Bucket(bucketShares).Put(keyOf(r.VIN, r.User), b); err != nil {
			return audit.Event{}, err
		}
		kb := tx.Bucket(bucketKeys)
		prefix := []byte(r.VIN + "/")
		var updated [][2][]byte
		c := kb.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var key protocol.WhitelistKey
			if err := json.Unmarshal(v, &key); err != nil {
				return audit.Event{}, err
			}
			if key.User != r.User {
				continue
			}
			key.Role, key.NotAfterMs, key.Channels = sh.Role, sh.NotAfterMs, sh.Channels
			nb, err := json.Marshal(key)
			if err != nil {
				return audit.Event{}, err
			}
			updated = append(updated, [2][]byte{slices.Clone(k), nb})
		}
		for _, kv := range updated { // not while the cursor walks the bucket
			if err := kb.Put(kv[0], kv[1]); err != nil {
				return audit.Event{}, err
			}
		}
		ev := audit.Event{Kind: audit.KindKeys, User: owner, ClientID: session, VIN: r.VIN, Outcome: "shared",
			Detail: fmt.Sprintf("with=%s role=%s not_after=%d channels=%v keys_updated=%d", r.User, r.Role, r.NotAfterMs, r.Channels, len(updated))}
		if len(updated) == 0 {
			return ev, errKeysUnchanged
		}
		return ev, nil
	})
	if err != nil {
		return Share{}, err
	}
	return sh, nil
}

// RevokeRequest names a key to revoke.
type RevokeRequest struct {
	VIN            string `json:"vin"`
	KeyID          string `json:"key_id"`
	TOTP           string `json:"totp,omitempty"`
	AllowLastOwner bool   `json:"allow_last_owner,omitempty"`
	// KeepShare keeps the share of a driver or valet whose last key an owner revokes. Without
	// it their share and role on the car end with that key: they cannot pair another phone
	// until an owner shares the car with them again.
	KeepShare bool `json:"keep_share,omitempty"`
}

// Revocation is what a revocation did.
type Revocation struct {
	VIN     string `json:"vin"`
	KeyID   string `json:"key_id"`
	User    string `json:"user"`    // whose key it was
	Version uint64 `json:"version"` // the whitelist version without it
	// ShareEnded: the key was the last of a driver or valet, and their share and role on the
	// car ended with it.
	ShareEnded bool `json:"share_ended"`
}

// ErrLastOwnerKey refuses to revoke the last active owner key of a car without the explicit
// flag: it would leave nobody able to manage the car's keys.
var ErrLastOwnerKey = errors.New("this is the car's last active owner key; pass allow_last_owner to revoke it anyway")

// Revoke marks a key revoked (an owner may revoke any key of the car, a user their own) and
// returns the whitelist version without it. See RevokeKey.
func (s *Service) Revoke(ctx context.Context, user, session string, r RevokeRequest) (uint64, error) {
	rv, err := s.RevokeKey(ctx, user, session, r)
	return rv.Version, err
}

// RevokeKey marks a key revoked: an owner may revoke any key of the car, a user their own.
// When an owner revokes the last key of a driver or valet, that user's share and role on the
// car end too (unless r.KeepShare), so the user cannot pair a new phone and be back: a user
// whose access the owner revoked does not get it back without the owner. A user revoking
// their own key keeps their share (a phone replaced).
func (s *Service) RevokeKey(ctx context.Context, user, session string, r RevokeRequest) (Revocation, error) {
	if !protocol.ValidVIN(r.VIN) || r.KeyID == "" || len(r.KeyID) > 64 {
		return Revocation{}, protocol.Refuse(protocol.ReasonBadRequest, "need a VIN and a key id")
	}
	v, err := s.vehicle(r.VIN)
	if err != nil {
		return Revocation{}, err
	}
	wl := s.Whitelist(r.VIN)
	var k protocol.WhitelistKey
	found := false
	if wl != nil {
		k, found = wl.Find(r.KeyID)
	}
	if !found {
		return Revocation{}, protocol.Refuse(protocol.ReasonKeyUnknown, "no key %q on %s", r.KeyID, r.VIN)
	}
	if v.Users[user] != protocol.RoleOwner && k.User != user {
		return Revocation{}, protocol.Refuse(protocol.ReasonForbidden, "only an owner of %s revokes other users' keys", r.VIN)
	}
	if k.RevokedAtMs != 0 {
		return Revocation{}, protocol.Refuse(protocol.ReasonKeyRevoked, "key %q is revoked already", r.KeyID)
	}
	if k.Role == protocol.RoleOwner && !r.AllowLastOwner {
		others := 0
		for _, o := range wl.Keys {
			if o.ID != k.ID && o.Role == protocol.RoleOwner && o.RevokedAtMs == 0 {
				others++
			}
		}
		if others == 0 {
			return Revocation{}, &protocol.Refusal{Reason: protocol.ReasonForbidden, Err: ErrLastOwnerKey}
		}
	}
	if err := s.tfa.RequireForKeyChange(user, session, ActionRevoke, r.TOTP); err != nil {
		return Revocation{}, err
	}
	return s.revoke(ctx, user, session, r)
}

// revoke is a revocation once the caller is authorized: by user (an owner, or the key's own
// user), or by the admin when user is "".
func (s *Service) revoke(ctx context.Context, user, session string, r RevokeRequest) (Revocation, error) {
	var out Revocation
	version, err := s.change(ctx, r.VIN, func(tx *bolt.Tx, nowMs int64) (audit.Event, error) {
		out = Revocation{VIN: r.VIN, KeyID: r.KeyID}
		kb := tx.Bucket(bucketKeys)
		b := kb.Get(keyOf(r.VIN, r.KeyID))
		if b == nil {
			return audit.Event{}, protocol.Refuse(protocol.ReasonKeyUnknown, "no key %q on %s", r.KeyID, r.VIN)
		}
		var stored protocol.WhitelistKey
		if err := json.Unmarshal(b, &stored); err != nil {
			return audit.Event{}, err
		}
		if stored.RevokedAtMs != 0 {
			return audit.Event{}, protocol.Refuse(protocol.ReasonKeyRevoked, "key %q is revoked already", r.KeyID)
		}
		out.User = stored.User
		byOwner := user == "" // the admin
		if user != "" {
			// Again under the car's lock: the revoker's role may have changed since.
			v, err := store.GetVehicleTx(tx, r.VIN)
			if err != nil {
				return audit.Event{}, err
			}
			byOwner = v.Users[user] == protocol.RoleOwner
			if !byOwner && stored.User != user {
				return audit.Event{}, protocol.Refuse(protocol.ReasonForbidden, "only an owner of %s revokes other users' keys", r.VIN)
			}
		}
		// Again under the car's lock: two owners revoking each other's key at once must not
		// both pass the check above.
		if stored.Role == protocol.RoleOwner && !r.AllowLastOwner {
			others, err := activeOwnerKeys(tx, r.VIN, r.KeyID)
			if err != nil {
				return audit.Event{}, err
			}
			if others == 0 {
				return audit.Event{}, &protocol.Refusal{Reason: protocol.ReasonForbidden, Err: ErrLastOwnerKey}
			}
		}
		stored.RevokedAtMs = nowMs
		nb, err := json.Marshal(stored)
		if err != nil {
			return audit.Event{}, err
		}
		if err := kb.Put(keyOf(r.VIN, r.KeyID), nb); err != nil {
			return audit.Event{}, err
		}
		if byOwner && stored.User != user && !r.KeepShare {
			if out.ShareEnded, err = endShareIfNoKeyLeft(tx, r.VIN, stored.User); err != nil {
				return audit.Event{}, err
			}
		}
		ev := audit.Event{Kind: audit.KindKeys, User: user, ClientID: session, VIN: r.VIN, Outcome: "revoked",
			Detail: fmt.Sprintf("key=%s of=%s share_ended=%t", r.KeyID, stored.User, out.ShareEnded)}
		if user == "" {
			ev.Kind, ev.User, ev.Outcome = audit.KindAdmin, stored.User, "key_revoked"
		}
		return ev, nil
	})
	out.Version = version
	return out, err
}

// endShareIfNoKeyLeft ends the share and removes the role of user on vin, inside tx, when
// user is a driver or valet there (not an owner) and holds no unrevoked key of the car.
func endShareIfNoKeyLeft(tx *bolt.Tx, vin, user string) (bool, error) {
	v, err := store.GetVehicleTx(tx, vin)
	if err != nil {
		return false, err
	}
	if role, ok := v.Users[user]; !ok || role == protocol.RoleOwner {
		return false, nil
	}
	keys, err := userKeys(tx, vin, user)
	if err != nil {
		return false, err
	}
	for _, k := range keys {
		if k.RevokedAtMs == 0 {
			return false, nil
		}
	}
	if err := tx.Bucket(bucketShares).Delete(keyOf(vin, user)); err != nil {
		return false, err
	}
	return true, store.UnassignTx(tx, vin, user)
}

// userKeys returns user's keys of vin (revoked ones too), inside tx.
func userKeys(tx *bolt.Tx, vin, user string) ([]protocol.WhitelistKey, error) {
	var out []protocol.WhitelistKey
	prefix := []byte(vin + "/")
	c := tx.Bucket(bucketKeys).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var key protocol.WhitelistKey
		if err := json.Unmarshal(v, &key); err != nil {
			return nil, err
		}
		if key.User == user {
			out = append(out, key)
		}
	}
	return out, nil
}

// activeOwnerKeys counts vin's owner keys that are not revoked, but for the key except.
func activeOwnerKeys(tx *bolt.Tx, vin, except string) (int, error) {
	n := 0
	prefix := []byte(vin + "/")
	c := tx.Bucket(bucketKeys).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var key protocol.WhitelistKey
		if err := json.Unmarshal(v, &key); err != nil {
			return 0, err
		}
		if key.ID != except && key.Role == protocol.RoleOwner && key.RevokedAtMs == 0 {
			n++
		}
	}
	return n, nil
}

// carLock returns the mutex that serializes vin's key changes.
func (s *Service) carLock(vin string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(vin))
	return &s.carMu[h.Sum32()%uint32(len(s.carMu))]
}

// change applies mutate to a car's keys, builds and signs the next whitelist version and
// writes both with the audit record in one transaction; then it publishes the whitelist. A
// change is acknowledged to the user only after the commit, so an acknowledged change
// survives a crash.
func (s *Service) change(ctx context.Context, vin string, mutate func(tx *bolt.Tx, nowMs int64) (audit.Event, error)) (uint64, error) {
	return s.changeWith(ctx, vin, mutate, nil)
}

// changeWith is change, with adjust applied to the car's new whitelist record before it is
// stored (nil: nothing to adjust).
func (s *Service) changeWith(ctx context.Context, vin string, mutate func(tx *bolt.Tx, nowMs int64) (audit.Event, error), adjust func(*record)) (uint64, error) {
	mu := s.carLock(vin)
	mu.Lock()
	defer mu.Unlock()
	nowMs := s.now().UnixMilli()
	var env protocol.Envelope
	var wl protocol.Whitelist
	var rec record
	var rebuilt bool
	// Through the group committer: changes of many cars (a fleet-wide revocation) share
	// fsyncs. The function may run twice (see groupcommit.Update); it only writes and signs.
	err := s.st.Write(func(tx *bolt.Tx) error {
		ev, err := mutate(tx, nowMs)
		rebuilt = !errors.Is(err, errKeysUnchanged)
		if err != nil && rebuilt {
			return err
		}
		ev.TsMs = nowMs
		if rebuilt {
			if wl, rec, err = s.build(tx, vin, nowMs, adjust); err != nil {
				return err
			}
			env = rec.Envelope
			ev.Detail = strings.TrimSpace(ev.Detail + fmt.Sprintf(" version=%d", wl.Version))
		}
		return audit.AppendTx(tx, ev)
	})
	if err != nil || !rebuilt {
		return 0, err
	}
	s.mu.Lock()
	s.cache[vin] = &wl
	if cur, ok := s.recs[vin]; ok && cur.AckedVersion > rec.AckedVersion {
		rec.AckedVersion, rec.AckedMs = cur.AckedVersion, cur.AckedMs
	}
	s.recs[vin] = rec
	s.mu.Unlock()
	s.publish(ctx, vin, env)
	return wl.Version, nil
}

// errKeysUnchanged is what a change's mutate returns when it wrote nothing the whitelist
// holds: its writes and audit record commit, and no new version is made.
var errKeysUnchanged = errors.New("no key changed")

// build makes the next whitelist version of vin from the keys bucket, signs it and stores the
// record, adjusted by adjust when not nil, inside tx.
func (s *Service) build(tx *bolt.Tx, vin string, nowMs int64, adjust func(*record)) (protocol.Whitelist, record, error) {
	wb := tx.Bucket(bucketWhitelists)
	var rec record
	if b := wb.Get([]byte(vin)); b != nil {
		if err := json.Unmarshal(b, &rec); err != nil {
			return protocol.Whitelist{}, rec, err
		}
	}
	wl := protocol.Whitelist{V: protocol.Version, VIN: vin, Version: rec.Version + 1, IssuedAtMs: nowMs}
	c := tx.Bucket(bucketKeys).Cursor()
	prefix := []byte(vin + "/")
	for k, v := c.Seek(prefix); k != nil && len(k) > len(prefix) && string(k[:len(prefix)]) == string(prefix); k, v = c.Next() {
		var key protocol.WhitelistKey
		if err := json.Unmarshal(v, &key); err != nil {
			return wl, rec, err
		}
		wl.Keys = append(wl.Keys, key)
	}
	sort.Slice(wl.Keys, func(i, j int) bool { return wl.Keys[i].ID < wl.Keys[j].ID })
	signer := s.ring.Current()
	if prev := s.ring.Previous(); prev != nil {
		// A rotation is under way: until this car acknowledged a version that told it to trust
		// the new key, sign with the key it trusts and tell it about the new one.
		cur := signer
		if rec.TrustKID != cur.KID() {
			rec.TrustFrom, rec.TrustKID = 0, cur.KID() // the hop to this key starts now
		}
		curPub, err := sign.EncodePublic(cur.Public())
		if err != nil {
			return wl, rec, err
		}
		if rec.trusts(cur.KID()) {
			wl.Trust = []string{curPub}
		} else {
			signer = prev
			prevPub, err := sign.EncodePublic(prev.Public())
			if err != nil {
				return wl, rec, err
			}
			wl.Trust = []string{curPub, prevPub}
			if rec.TrustFrom == 0 {
				rec.TrustFrom = wl.Version
			}
		}
	}
	env, err := whitelist.Sign(signer, wl)
	if err != nil {
		return wl, rec, err
	}
	rec.Version, rec.Envelope = wl.Version, env
	if adjust != nil {
		adjust(&rec)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return wl, rec, err
	}
	return wl, rec, wb.Put([]byte(vin), b)
}

func (s *Service) publish(ctx context.Context, vin string, env protocol.Envelope) {
	b, err := json.Marshal(env)
	if err != nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.bus.Publish(pctx, protocol.VehicleTopic(vin, protocol.SuffixKeys), 1, true, b); err != nil {
		// The whitelist is committed; it goes out again on the next broker (re)connect.
		s.log.Warn("whitelist not published; will retry on reconnect", "vin", vin, "err", err)
	}
}

// vins returns the cars that have a whitelist.
func (s *Service) vins() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Collect(maps.Keys(s.recs))
}

// PublishAll publishes every car's current whitelist, retained: after a broker (re)start the
// broker has none of them. During a rotation it first re-signs the whitelists of cars that
// have not yet learned the new key.
func (s *Service) PublishAll(ctx context.Context) int {
	vins := s.vins()
	for _, vin := range vins {
		// Under the car's lock, so a change publishing a newer version cannot be overtaken
		// by this older one.
		mu := s.carLock(vin)
		mu.Lock()
		s.mu.RLock()
		env := s.recs[vin].Envelope
		s.mu.RUnlock()
		s.publish(ctx, vin, env)
		mu.Unlock()
	}
	return len(vins)
}

// Rotate re-signs every car's whitelist after the signing key changed, so each learns to
// trust the new key from a document signed by the old one.
func (s *Service) Rotate(ctx context.Context) error {
	for _, vin := range s.vins() {
		if s.retired(vin) {
			continue // a decommissioned car that cannot connect any more
		}
		_, err := s.change(ctx, vin, func(tx *bolt.Tx, nowMs int64) (audit.Event, error) {
			return audit.Event{Kind: audit.KindKeys, VIN: vin, Outcome: "signing_key_rotated"}, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// OnAck records a car's acknowledgement of a whitelist version.
func (s *Service) OnAck(m mqttc.Message) {
	vin, suffix, ok := protocol.ParseVehicleTopic(m.Topic)
	if !ok || suffix != protocol.SuffixKeysAck {
		return
	}
	var ack protocol.KeysAck
	if err := protocol.Decode(m.Payload, &ack); err != nil || ack.VIN != vin {
		s.log.Warn("malformed whitelist ack", "vin", vin)
		return
	}
	nowMs := s.now().UnixMilli()
	var r record
	updated, adopted, retired := false, false, ""
	rotating, curKID := s.ring.Previous() != nil, s.ring.Current().KID()
	// Read-modify-write inside one transaction: a key change may have stored a newer version
	// since, and must not be rolled back by a stale copy.
	err := s.st.Write(func(tx *bolt.Tx) error {
		updated, adopted, retired = false, false, ""
		b := tx.Bucket(bucketWhitelists).Get([]byte(vin))
		if b == nil {
			return nil
		}
		if err := json.Unmarshal(b, &r); err != nil {
			return err
		}
		if ack.Version <= r.AckedVersion || ack.Version > r.Version {
			return nil
		}
		// This acknowledgement is the car's first of a version naming the current key.
		adopted = rotating && !r.trusts(curKID)
		r.AckedVersion, r.AckedMs = ack.Version, nowMs
		adopted = adopted && r.trusts(curKID)
		if r.RetireOnAck != 0 && r.AckedVersion >= r.RetireOnAck {
			// A decommissioned car has its empty whitelist: retire its credentials now, in
			// the transaction that records the acknowledgement.
			jti, err := newRetiredJTI()
			if err != nil {
				return err
			}
			if err := retireTx(tx, vin, jti, nowMs); err != nil {
				return err
			}
			r.RetireOnAck, r.Retired, retired = 0, true, jti
		}
		nb, err := json.Marshal(r)
		if err != nil {
			return err
		}
		updated = true
		return tx.Bucket(bucketWhitelists).Put([]byte(vin), nb)
	})
	if err != nil {
		s.log.Error("store whitelist ack", "vin", vin, "err", err)
		return
	}
	if !updated {
		return
	}
	s.mu.Lock()
	if cur, ok := s.recs[vin]; ok && cur.AckedVersion < r.AckedVersion {
		cur.AckedVersion, cur.AckedMs = r.AckedVersion, r.AckedMs
		if retired != "" {
			cur.RetireOnAck, cur.Retired = 0, true
		}
		s.recs[vin] = cur
	}
	s.mu.Unlock()
	if retired != "" {
		s.credentialsRetired(vin, retired)
	}
	if adopted {
		// The car trusts the new key now: move it onto a whitelist signed by that key.
		// Done here, not on a goroutine of its own: no goroutine without an owner. Rotations
		// are rare, and an inline publish from a handler does not block.
		_, err := s.change(context.Background(), vin, func(tx *bolt.Tx, nowMs int64) (audit.Event, error) {
			return audit.Event{Kind: audit.KindKeys, VIN: vin, Outcome: "signing_key_adopted"}, nil
		})
		if err != nil {
			s.log.Error("move car to the new signing key", "vin", vin, "err", err)
		}
	}
}

// OnEvent files a car's journal entry (what it did over the local link) in the audit log,
// once: entries carry a per-car sequence number, and a redelivered one is ignored.
func (s *Service) OnEvent(m mqttc.Message) {
	vin, suffix, ok := protocol.ParseVehicleTopic(m.Topic)
	if !ok || suffix != protocol.SuffixEvents {
		return
	}
	var ev protocol.VehicleEvent
	if err := protocol.Decode(m.Payload, &ev); err != nil || ev.VIN != vin || ev.Seq == 0 {
		s.log.Warn("malformed vehicle event", "vin", vin)
		return
	}
	detail := fmt.Sprintf("%s key=%s seq=%d", ev.Kind, ev.KeyID, ev.Seq)
	if ev.Count > 1 {
		// A summary the car wrote while its journal was full: every refusal it stands for.
		detail += fmt.Sprintf(" count=%d first_ts=%d", ev.Count, ev.FirstTsMs)
	}
	err := s.st.Write(func(tx *bolt.Tx) error {
		// Every filed (vin, seq) is remembered, so a redelivered entry is ignored even when
		// entries arrive out of order.
		jb := tx.Bucket(bucketJournal)
		k := binary.BigEndian.AppendUint64([]byte(vin+"/"), ev.Seq)
		if jb.Get(k) != nil {
			return nil
		}
		nowMs := s.now().UnixMilli()
		if err := pruneJournalTx(jb, vin, nowMs-journalMarkerTTL.Milliseconds()); err != nil {
			return err
		}
		if err := jb.Put(k, binary.BigEndian.AppendUint64(nil, uint64(nowMs))); err != nil {
			return err
		}
		return audit.AppendTx(tx, audit.Event{TsMs: ev.TsMs, Kind: audit.KindVehicle, User: ev.User, VIN: vin, CmdID: ev.CmdID,
			Action: string(ev.Action), Outcome: ev.Status, Reason: string(ev.Reason), Detail: detail})
	})
	if err != nil {
		s.log.Error("file vehicle event", "vin", vin, "err", err)
		return
	}
	// The entry is committed (now or before): the car may delete it. A lost acknowledgement
	// costs a redelivery after the car's next reconnect, which is ignored and acknowledged.
	ack, err := json.Marshal(protocol.EventsAck{V: protocol.Version, VIN: vin, Seqs: []uint64{ev.Seq}})
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.bus.Publish(ctx, protocol.VehicleTopic(vin, protocol.SuffixEventsAck), 1, false, ack); err != nil {
		s.log.Warn("journal acknowledgement not published; the car sends the entry again after its next reconnect", "vin", vin, "seq", ev.Seq, "err", err)
	}
}

// journalMarkerTTL is how long the gateway remembers that it filed a car's journal entry. A
// car resends an entry only until the gateway's acknowledgement reaches it (after its next
// reconnect at the latest), so a week covers a car off the network for days; an entry resent
// later still is filed a second time, never lost. Without an end, the markers of a car that
// journals for years (someone next to it trying keys, every refusal is an entry) would grow
// without bound.
const journalMarkerTTL = 7 * 24 * time.Hour

// journalPruneBatch bounds the markers one filing deletes, so a backlog is worked off a little
// at each entry instead of in one long transaction.
const journalPruneBatch = 64

// pruneJournalTx deletes vin's oldest filing markers made before cutoffMs. Markers are keyed
// by the car's sequence numbers, which grow with time, so the scan stops at the first newer
// one. Markers of older builds hold no time and go first.
func pruneJournalTx(jb *bolt.Bucket, vin string, cutoffMs int64) error {
	prefix := []byte(vin + "/")
	c := jb.Cursor()
	var old [][]byte
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(old) < journalPruneBatch; k, v = c.Next() {
		if len(v) == 8 && int64(binary.BigEndian.Uint64(v)) >= cutoffMs {
			break
		}
		old = append(old, bytes.Clone(k))
	}
	for _, k := range old {
		if err := jb.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// OutOfSync is how many cars have not yet acknowledged their current whitelist (a key change,
// a revocation included, that has not reached the car).
func (s *Service) OutOfSync() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, r := range s.recs {
		if r.AckedVersion < r.Version && !r.Retired {
			n++
		}
	}
	return n
}

// Status reports a car's whitelist version, what the car acknowledged, and its keys.
func (s *Service) Status(vin string) Status {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r := s.recs[vin]
	st := Status{VIN: vin, Version: r.Version, AckedVersion: r.AckedVersion, AckedMs: r.AckedMs, InSync: r.Version == r.AckedVersion}
	if wl := s.cache[vin]; wl != nil {
		st.Keys = append(st.Keys, wl.Keys...)
	}
	return st
}

// List is what user may see of vin's keys: everything for an owner, their own keys otherwise.
func (s *Service) List(user, vin string) (Status, error) {
	v, err := s.vehicle(vin)
	if err != nil {
		return Status{}, err
	}
	role, ok := v.Users[user]
	if !ok {
		return Status{}, protocol.Refuse(protocol.ReasonForbidden, "you hold no role on %s", vin)
	}
	st := s.Status(vin)
	if role != protocol.RoleOwner {
		own := st.Keys[:0:0]
		for _, k := range st.Keys {
			if k.User == user {
				own = append(own, k)
			}
		}
		st.Keys = own
	}
	return st, nil
}

// ListAll is List for every car the user holds a role on, in VIN order.
func (s *Service) ListAll(user string) ([]Status, error) {
	vs, err := s.st.ListVehicles()
	if err != nil {
		return nil, err
	}
	out := []Status{}
	for _, v := range vs {
		if _, ok := v.Users[user]; !ok {
			continue
		}
		st, err := s.List(user, v.VIN)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

func (s *Service) vehicle(vin string) (store.Vehicle, error) {
	v, err := s.st.GetVehicle(vin)
	if errors.Is(err, store.ErrNotFound) {
		return v, protocol.Refuse(protocol.ReasonVehicleUnknown, "no vehicle %s", vin)
	}
	return v, err
}

// Subscribe registers the acknowledgement and journal handlers.
func (s *Service) Subscribe(ctx context.Context) error {
	if err := s.bus.Subscribe(ctx, "v/+/keys/ack", 1, s.OnAck); err != nil {
		return err
	}
	return s.bus.Subscribe(ctx, "v/+/events", 1, s.OnEvent)
}
