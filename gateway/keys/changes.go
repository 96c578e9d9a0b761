package keys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/gateway/store"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// Share is what an owner granted another user on one car; it is stored as JSON in the shares
// bucket (its tags are its stored form).
type Share struct {
	VIN        string        `json:"vin"`
	User       string        `json:"user"`
	Role       protocol.Role `json:"role"`
	NotAfterMs int64         `json:"not_after,omitempty"`
	Channels   []string      `json:"channels"`
	By         string        `json:"by"`
	CreatedMs  int64         `json:"created"`
}

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
	_, err = s.change(ctx, vin, func(tx kv.Tx, nowMs int64) (audit.Event, error) {
		if old, err := tx.Get(bucketKeys, keyOf(vin, id)); err != nil {
			return audit.Event{}, err
		} else if old != nil {
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
		if b, err := tx.Get(bucketShares, keyOf(vin, user)); err != nil {
			return audit.Event{}, err
		} else if b != nil {
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
			Detail: fmt.Sprintf("key=%s role=%s", k.ID, k.Role)}, tx.Put(bucketKeys, keyOf(vin, k.ID), b)
	})
	return out, err
}

// ShareRequest is what an owner gives another user.
type ShareRequest struct {
	VIN        string
	User       string
	Role       protocol.Role
	NotAfterMs int64
	Channels   []string
	TOTP       string
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
	if r.NotAfterMs != 0 && r.NotAfterMs <= s.clk.Now().UnixMilli() {
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
	_, err = s.change(ctx, r.VIN, func(tx kv.Tx, nowMs int64) (audit.Event, error) {
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
		if err := tx.Put(bucketShares, keyOf(r.VIN, r.User), b); err != nil {
			return audit.Event{}, err
		}
		updated, err := userKeys(tx, r.VIN, r.User)
		if err != nil {
			return audit.Event{}, err
		}
		for _, key := range updated {
			key.Role, key.NotAfterMs, key.Channels = sh.Role, sh.NotAfterMs, sh.Channels
			nb, err := json.Marshal(key)
			if err != nil {
				return audit.Event{}, err
			}
			if err := tx.Put(bucketKeys, keyOf(r.VIN, key.ID), nb); err != nil {
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
	VIN            string
	KeyID          string
	TOTP           string
	AllowLastOwner bool
	// KeepShare keeps the share of a driver or valet whose last key an owner revokes. Without
	// it their share and role on the car end with that key: they cannot pair another phone
	// until an owner shares the car with them again.
	KeepShare bool
}

// Revocation is what a revocation did.
type Revocation struct {
	VIN     string
	KeyID   string
	User    string // whose key it was
	Version uint64 // the whitelist version without it
	// ShareEnded: the key was the last of a driver or valet, and their share and role on the
	// car ended with it.
	ShareEnded bool
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
	version, err := s.change(ctx, r.VIN, func(tx kv.Tx, nowMs int64) (audit.Event, error) {
		out = Revocation{VIN: r.VIN, KeyID: r.KeyID}
		b, err := tx.Get(bucketKeys, keyOf(r.VIN, r.KeyID))
		if err != nil {
			return audit.Event{}, err
		}
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
		if err := tx.Put(bucketKeys, keyOf(r.VIN, r.KeyID), nb); err != nil {
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
func endShareIfNoKeyLeft(tx kv.Tx, vin, user string) (bool, error) {
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
	if err := tx.Delete(bucketShares, keyOf(vin, user)); err != nil {
		return false, err
	}
	return true, store.UnassignTx(tx, vin, user)
}

// userKeys returns user's keys of vin (revoked ones too), inside tx.
func userKeys(tx kv.Tx, vin, user string) ([]protocol.WhitelistKey, error) {
	keys, err := carKeysTx(tx, vin)
	if err != nil {
		return nil, err
	}
	var out []protocol.WhitelistKey
	for _, key := range keys {
		if key.User == user {
			out = append(out, key)
		}
	}
	return out, nil
}

// activeOwnerKeys counts vin's owner keys that are not revoked, but for the key except.
func activeOwnerKeys(tx kv.Tx, vin, except string) (int, error) {
	keys, err := carKeysTx(tx, vin)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, key := range keys {
		if key.ID != except && key.Role == protocol.RoleOwner && key.RevokedAtMs == 0 {
			n++
		}
	}
	return n, nil
}
