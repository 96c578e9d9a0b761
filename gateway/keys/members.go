package keys

// Who is on a car: every change of a user's role on a car (the admin's assignments, an owner
// removing someone, a transfer to a new owner, a decommission) goes through here, under the
// car's lock and in one transaction with the user's keys, their share, the car's next
// whitelist version and the audit record. So a role change reaches the keys (a driver made
// valet can no longer start the climate), a removed user's keys are revoked with the role, and
// the car's versions stay gapless.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/gateway/store"
	"telematics/pkg/protocol"
)

// RoleNone is the role that removes a user from a car (the admin's `assign --role none`).
const RoleNone protocol.Role = "none"

// ActionRemoveUser is the 2FA policy's name for an owner removing a user: a key change like a
// revocation.
const ActionRemoveUser = ActionRevoke

// RoleChange is what a role change did.
type RoleChange struct {
	VIN  string
	User string
	Role protocol.Role // "none": the user was removed from the car
	// KeysChanged is how many of the user's keys were rewritten with the new role, or revoked
	// when the user was removed.
	KeysChanged int
	// Version is the whitelist version that carries the change to the car; 0 when no key
	// changed (the user had paired none).
	Version uint64
}

// Assign is the admin's role change: user gets role on vin, and every unrevoked key the user
// paired with the car is rewritten with it in a new whitelist version (a driver made valet can
// only lock, unlock and locate from then on). An owner's keys carry no share terms (expiry,
// channels); a driver's or valet's keep those of their share. RoleNone removes the user: their
// keys are revoked, their share and role end.
func (s *Service) Assign(ctx context.Context, vin, user string, role protocol.Role) (RoleChange, error) {
	if !protocol.ValidVIN(vin) || !protocol.ValidUser(user) || (role != RoleNone && !protocol.ValidKeyRole(role)) {
		return RoleChange{}, protocol.Refuse(protocol.ReasonBadRequest, "need a VIN, a user name and a role of owner, driver, valet or none")
	}
	if _, err := s.vehicle(vin); err != nil {
		return RoleChange{}, err
	}
	out := RoleChange{VIN: vin, User: user, Role: role}
	version, err := s.change(ctx, vin, func(tx kv.Tx, nowMs int64) (audit.Event, error) {
		v, err := store.GetVehicleTx(tx, vin)
		if err != nil {
			return audit.Event{}, err
		}
		if v.DecommissionedMs != 0 {
			return audit.Event{}, protocol.Refuse(protocol.ReasonBadRequest, "%s is decommissioned: nobody can be given a role on it", vin)
		}
		outcome := "assigned"
		if role == RoleNone {
			if _, ok := v.Users[user]; !ok {
				return audit.Event{}, protocol.Refuse(protocol.ReasonBadRequest, "%s holds no role on %s", user, vin)
			}
			outcome = "unassigned"
		} else if exists, err := store.UserExistsTx(tx, user); err != nil {
			return audit.Event{}, err
		} else if !exists {
			return audit.Event{}, protocol.Refuse(protocol.ReasonBadRequest, "no user %q: add it first (gateway admin user add)", user)
		}
		n, err := setRoleTx(tx, vin, user, role, nowMs)
		if err != nil {
			return audit.Event{}, err
		}
		out.KeysChanged = n
		ev := audit.Event{Kind: audit.KindAdmin, User: user, VIN: vin, Outcome: outcome,
			Detail: fmt.Sprintf("role=%s keys_changed=%d", role, n)}
		if n == 0 {
			return ev, errKeysUnchanged
		}
		return ev, nil
	})
	out.Version = version
	return out, err
}

// Unassign is the admin's removal of user from vin: Assign with RoleNone.
func (s *Service) Unassign(ctx context.Context, vin, user string) (RoleChange, error) {
	return s.Assign(ctx, vin, user, RoleNone)
}

// UnassignEverywhere removes user from every car they hold a role on, each as Unassign (for a
// user being disabled or deleted). It returns the changes made, in VIN order.
func (s *Service) UnassignEverywhere(ctx context.Context, user string) ([]RoleChange, error) {
	vs, err := s.st.ListVehicles()
	if err != nil {
		return nil, err
	}
	var out []RoleChange
	for _, v := range vs {
		if _, ok := v.Users[user]; !ok {
			continue
		}
		rc, err := s.Unassign(ctx, v.VIN, user)
		if protocol.ReasonOf(err) == protocol.ReasonBadRequest {
			continue // removed meanwhile
		}
		if err != nil {
			return out, fmt.Errorf("remove %s from %s: %w", user, v.VIN, err)
		}
		out = append(out, rc)
	}
	return out, nil
}

// RemoveUserRequest is an owner's "remove this user from this car".
type RemoveUserRequest struct {
	VIN  string
	User string
	TOTP string
}

// RemoveUser is an owner removing a driver or valet from their car: every key of that user is
// revoked, their share and role end, in one new whitelist version. The user cannot pair again
// until an owner shares the car with them again. Owners are removed by the admin.
func (s *Service) RemoveUser(ctx context.Context, owner, session string, r RemoveUserRequest) (RoleChange, error) {
	if !protocol.ValidVIN(r.VIN) || !protocol.ValidUser(r.User) {
		return RoleChange{}, protocol.Refuse(protocol.ReasonBadRequest, "need a VIN and a user name")
	}
	if r.User == owner {
		return RoleChange{}, protocol.Refuse(protocol.ReasonBadRequest, "you cannot remove yourself; revoke your keys, or ask the admin")
	}
	v, err := s.vehicle(r.VIN)
	if err != nil {
		return RoleChange{}, err
	}
	if err := checkRemovable(v, owner, r.User); err != nil {
		return RoleChange{}, err
	}
	if err := s.tfa.RequireForKeyChange(owner, session, ActionRemoveUser, r.TOTP); err != nil {
		return RoleChange{}, err
	}
	out := RoleChange{VIN: r.VIN, User: r.User, Role: RoleNone}
	version, err := s.change(ctx, r.VIN, func(tx kv.Tx, nowMs int64) (audit.Event, error) {
		v, err := store.GetVehicleTx(tx, r.VIN) // again, under the car's lock
		if err != nil {
			return audit.Event{}, err
		}
		if err := checkRemovable(v, owner, r.User); err != nil {
			return audit.Event{}, err
		}
		n, err := setRoleTx(tx, r.VIN, r.User, RoleNone, nowMs)
		if err != nil {
			return audit.Event{}, err
		}
		out.KeysChanged = n
		ev := audit.Event{Kind: audit.KindKeys, User: owner, ClientID: session, VIN: r.VIN, Outcome: "user_removed",
			Detail: fmt.Sprintf("user=%s keys_revoked=%d", r.User, n)}
		if n == 0 {
			return ev, errKeysUnchanged
		}
		return ev, nil
	})
	out.Version = version
	return out, err
}

// checkRemovable is RemoveUser's rule: owner owns v, and user is a driver or valet of it.
func checkRemovable(v store.Vehicle, owner, user string) error {
	if v.Users[owner] != protocol.RoleOwner {
		return protocol.Refuse(protocol.ReasonForbidden, "only an owner of %s removes its users", v.VIN)
	}
	switch v.Users[user] {
	case protocol.RoleOwner:
		return protocol.Refuse(protocol.ReasonForbidden, "%s is an owner of %s: only the admin removes an owner", user, v.VIN)
	case "":
		return protocol.Refuse(protocol.ReasonBadRequest, "%s holds no role on %s", user, v.VIN)
	}
	return nil
}

// setRoleTx gives user role on vin inside tx and brings their share and unrevoked keys in line
// with it; RoleNone revokes their keys and ends their share and role. It returns how many keys
// it changed.
func setRoleTx(tx kv.Tx, vin, user string, role protocol.Role, nowMs int64) (int, error) {
	keys, err := userKeys(tx, vin, user)
	if err != nil {
		return 0, err
	}
	var share *Share
	if b, err := tx.Get(bucketShares, keyOf(vin, user)); err != nil {
		return 0, err
	} else if b != nil {
		share = &Share{}
		if err := json.Unmarshal(b, share); err != nil {
			return 0, err
		}
	}
	switch {
	case role == RoleNone:
		if err := store.UnassignTx(tx, vin, user); err != nil {
			return 0, err
		}
		share = nil
	case role == protocol.RoleOwner:
		if err := store.AssignTx(tx, vin, user, role); err != nil {
			return 0, err
		}
		share = nil // an owner holds the car on no one's terms
	default:
		if err := store.AssignTx(tx, vin, user, role); err != nil {
			return 0, err
		}
		if share != nil {
			share.Role = role
			b, err := json.Marshal(share)
			if err != nil {
				return 0, err
			}
			if err := tx.Put(bucketShares, keyOf(vin, user), b); err != nil {
				return 0, err
			}
		}
	}
	if share == nil {
		if err := tx.Delete(bucketShares, keyOf(vin, user)); err != nil {
			return 0, err
		}
	}
	n := 0
	for _, k := range keys {
		if k.RevokedAtMs != 0 {
			continue
		}
		was := k
		switch {
		case role == RoleNone:
			k.RevokedAtMs = nowMs
		case role == protocol.RoleOwner:
			k.Role, k.NotAfterMs, k.Channels = role, 0, []string{protocol.ChannelCloud, protocol.ChannelLocal}
		default:
			k.Role = role
			if share != nil {
				k.NotAfterMs, k.Channels = share.NotAfterMs, share.Channels
			}
		}
		if k.Role == was.Role && k.RevokedAtMs == was.RevokedAtMs && k.NotAfterMs == was.NotAfterMs && slices.Equal(k.Channels, was.Channels) {
			continue
		}
		b, err := json.Marshal(k)
		if err != nil {
			return 0, err
		}
		if err := tx.Put(bucketKeys, keyOf(vin, k.ID), b); err != nil {
			return 0, err
		}
		n++
	}
	return n, nil
}

// clearCarTx removes every key, share and role of vin inside tx (a transfer, a
// decommission); it returns the users removed, sorted, and the number of keys removed.
func clearCarTx(tx kv.Tx, vin string) ([]string, int, error) {
	v, err := store.GetVehicleTx(tx, vin)
	if err != nil {
		return nil, 0, err
	}
	var users []string
	for u := range v.Users {
		users = append(users, u)
	}
	slices.Sort(users)
	n := 0
	for _, b := range [][]byte{bucketKeys, bucketShares} {
		var dead [][]byte
		err := tx.Scan(b, []byte(vin+"/"), nil, func(k, _ []byte) error {
			dead = append(dead, slices.Clone(k))
			return nil
		})
		if err != nil {
			return nil, 0, err
		}
		for _, k := range dead { // not while the scan walks the bucket
			if err := tx.Delete(b, k); err != nil {
				return nil, 0, err
			}
		}
		if string(b) == string(bucketKeys) {
			n = len(dead)
		}
	}
	return users, n, store.UpdateVehicleTx(tx, vin, func(v *store.Vehicle) { v.Users = nil })
}

// Transfer is what a transfer of a car to a new owner did.
type Transfer struct {
	VIN          string
	Owner        string
	UsersRemoved []string
	KeysRemoved  int
	Version      uint64 // the whitelist without them; 0 if there were no keys
}

// Transfer gives vin to a new owner: every user's role and share end and every key is taken
// off the car (the new owner's earlier keys too: they pair their phone as its owner), the
// new owner becomes its only owner, and the car gets one new whitelist version, all in one
// transaction. The previous owner keeps nothing.
func (s *Service) Transfer(ctx context.Context, vin, newOwner string) (Transfer, error) {
	if !protocol.ValidVIN(vin) || !protocol.ValidUser(newOwner) {
		return Transfer{}, protocol.Refuse(protocol.ReasonBadRequest, "need a VIN and the new owner's user name")
	}
	if _, err := s.vehicle(vin); err != nil {
		return Transfer{}, err
	}
	out := Transfer{VIN: vin, Owner: newOwner}
	version, err := s.change(ctx, vin, func(tx kv.Tx, nowMs int64) (audit.Event, error) {
		v, err := store.GetVehicleTx(tx, vin)
		if err != nil {
			return audit.Event{}, err
		}
		if v.DecommissionedMs != 0 {
			return audit.Event{}, protocol.Refuse(protocol.ReasonBadRequest, "%s is decommissioned: it cannot be transferred", vin)
		}
		if exists, err := store.UserExistsTx(tx, newOwner); err != nil {
			return audit.Event{}, err
		} else if !exists {
			return audit.Event{}, protocol.Refuse(protocol.ReasonBadRequest, "no user %q: add it first (gateway admin user add)", newOwner)
		}
		users, n, err := clearCarTx(tx, vin)
		if err != nil {
			return audit.Event{}, err
		}
		if err := store.AssignTx(tx, vin, newOwner, protocol.RoleOwner); err != nil {
			return audit.Event{}, err
		}
		out.UsersRemoved = slices.DeleteFunc(users, func(u string) bool { return u == newOwner })
		out.KeysRemoved = n
		ev := audit.Event{Kind: audit.KindAdmin, User: newOwner, VIN: vin, Outcome: "transferred",
			Detail: fmt.Sprintf("users_removed=%v keys_removed=%d", out.UsersRemoved, n)}
		if n == 0 {
			return ev, errKeysUnchanged
		}
		return ev, nil
	})
	out.Version = version
	return out, err
}

// Decommission is what a decommission did.
type Decommission struct {
	VIN          string
	UsersRemoved []string
	KeysRemoved  int
	// Version is the car's empty whitelist. Its credentials are retired once the car
	// acknowledges it (CredentialsRetired false until then), or at once with retireNow.
	Version            uint64
	CredentialsRetired bool
}

// Decommission takes vin out of service: every role, share and key of the car ends, and an
// empty whitelist is published, so neither the cloud nor the car's local link opens it with
// any key. Its credentials are retired (every token of the car refused, its session closed)
// in the transaction that records the car's acknowledgement of the empty whitelist: until
// then the car may connect only to receive it. retireNow retires them at once instead (a car
// that will not come back, a leaked token), also for a car decommissioned earlier; the car then
// keeps its last whitelist on its local link. Nobody can be given a role on the car afterwards.
func (s *Service) Decommission(ctx context.Context, vin string, retireNow bool) (Decommission, error) {
	if !protocol.ValidVIN(vin) {
		return Decommission{}, protocol.Refuse(protocol.ReasonBadRequest, "%q is not a VIN", vin)
	}
	if _, err := s.vehicle(vin); err != nil {
		return Decommission{}, err
	}
	jti, err := newRetiredJTI()
	if err != nil {
		return Decommission{}, err
	}
	out := Decommission{VIN: vin}
	version, err := s.changeWith(ctx, vin, func(tx kv.Tx, nowMs int64) (audit.Event, error) {
		out = Decommission{VIN: vin, CredentialsRetired: retireNow}
		v, err := store.GetVehicleTx(tx, vin)
		if err != nil {
			return audit.Event{}, err
		}
		switch {
		case v.RetiredMs != 0:
			return audit.Event{}, protocol.Refuse(protocol.ReasonDuplicate, "%s is decommissioned and its credentials are retired already", vin)
		case v.DecommissionedMs != 0 && !retireNow:
			return audit.Event{}, protocol.Refuse(protocol.ReasonDuplicate,
				"%s is decommissioned already; its credentials are retired once it acknowledges its empty whitelist, or now with retire_now", vin)
		}
		if out.UsersRemoved, out.KeysRemoved, err = clearCarTx(tx, vin); err != nil {
			return audit.Event{}, err
		}
		err = store.UpdateVehicleTx(tx, vin, func(v *store.Vehicle) {
			if v.DecommissionedMs == 0 {
				v.DecommissionedMs = nowMs
			}
		})
		if err != nil {
			return audit.Event{}, err
		}
		if retireNow {
			if err := retireTx(tx, vin, jti, nowMs); err != nil {
				return audit.Event{}, err
			}
		}
		return audit.Event{Kind: audit.KindAdmin, VIN: vin, Outcome: "decommissioned",
			Detail: fmt.Sprintf("users_removed=%v keys_removed=%d credentials_retired=%t", out.UsersRemoved, out.KeysRemoved, retireNow)}, nil
	}, func(r *record) {
		if retireNow {
			r.Retired, r.RetireOnAck = true, 0
		} else {
			r.RetireOnAck = r.Version
		}
	})
	if err != nil {
		return Decommission{}, err
	}
	out.Version = version
	if retireNow {
		s.credentialsRetired(vin, jti)
	}
	return out, nil
}

// AdminRevoke is the admin revoking one key of vin: no second factor, no last-owner rule
// (the admin can always assign a new owner). As when an owner revokes it, the last key of a
// driver or valet ends their share and role unless keepShare.
func (s *Service) AdminRevoke(ctx context.Context, vin, keyID string, keepShare bool) (Revocation, error) {
	if !protocol.ValidVIN(vin) || keyID == "" || len(keyID) > 64 {
		return Revocation{}, protocol.Refuse(protocol.ReasonBadRequest, "need a VIN and a key id")
	}
	if _, err := s.vehicle(vin); err != nil {
		return Revocation{}, err
	}
	return s.revoke(ctx, "", "", RevokeRequest{VIN: vin, KeyID: keyID, AllowLastOwner: true, KeepShare: keepShare})
}

// retireTx records inside tx that vin's only accepted token is jti, a token id no token
// carries: every token the car holds is refused from then on, by the embedded broker and,
// once told, a standalone one.
func retireTx(tx kv.Tx, vin, jti string, nowMs int64) error {
	return store.UpdateVehicleTx(tx, vin, func(v *store.Vehicle) { v.TokenID, v.Reissued, v.RetiredMs = jti, true, nowMs })
}

// newRetiredJTI makes the token id that retires a car's credentials: random, so no token the
// gateway ever issued or will issue carries it.
func newRetiredJTI() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make a retired token id: %w", err)
	}
	return "retired-" + hex.EncodeToString(b), nil
}

// credentialsRetired tells the broker side that vin's credentials were retired.
func (s *Service) credentialsRetired(vin, jti string) {
	s.log.Info("credentials of a decommissioned car retired", "vin", vin)
	if s.CredentialsRetired != nil {
		s.CredentialsRetired(vin, jti)
	}
}

// retired reports whether vin's credentials were retired (it cannot connect any more).
func (s *Service) retired(vin string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.recs[vin].Retired
}
