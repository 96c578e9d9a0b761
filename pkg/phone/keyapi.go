package phone

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// The gateway's digital-key API. Every call is authorized by the session's app token; key
// changes carry a TOTP code where the gateway's policy asks for one (by default it does), and
// are refused with totp_required, totp_invalid, totp_replayed, totp_enrollment_required or
// locked_out otherwise. Errors are *APIError.

// KeyStatus is one car's keys as the gateway shows them: the owner sees every key of the car,
// anyone else only their own. Version is the newest whitelist the gateway issued for the car,
// AckedVersion the newest the car confirmed it stored: until they are equal, the last change
// (a revocation, say) has not reached the car, and the car still decides by the older list
// on its local link.
type KeyStatus struct {
	VIN          string                  `json:"vin"`
	Version      uint64                  `json:"version"`
	AckedVersion uint64                  `json:"acked_version"`
	AckedAtMs    int64                   `json:"acked_ts,omitempty"`
	Keys         []protocol.WhitelistKey `json:"keys"`
}

// InSync reports whether the car has confirmed the newest whitelist.
func (s KeyStatus) InSync() bool { return s.AckedVersion >= s.Version }

// Share is what an owner grants another user on one car. That user then pairs their own
// phone's key (PairKey) and gets a key with this role, channels and expiry.
type Share struct {
	VIN        string        `json:"vin"`
	User       string        `json:"user"`
	Role       protocol.Role `json:"role"`               // driver or valet
	NotAfterMs int64         `json:"not_after"`          // unix ms; 0: no expiry
	Channels   []string      `json:"channels,omitempty"` // empty: the gateway's default, both
}

// Revocation is the gateway's answer to a revocation: the whitelist version that no longer
// holds the key. The car has it once KeyStatus.AckedVersion reaches Version.
type Revocation struct {
	VIN     string `json:"vin"`
	KeyID   string `json:"key_id"`
	User    string `json:"user,omitempty"` // whose key it was
	Version uint64 `json:"version"`
	// ShareEnded: the key was the last one of a driver or valet the owner had shared the car
	// with, and their share ended with it (they cannot pair again unless shared again).
	ShareEnded bool `json:"share_ended,omitempty"`
}

// RevokeRequest is a revocation with every option.
type RevokeRequest struct {
	VIN   string `json:"vin"`
	KeyID string `json:"key_id"`
	TOTP  string `json:"totp,omitempty"`
	// AllowLastOwner allows revoking the car's last owner key.
	AllowLastOwner bool `json:"allow_last_owner"`
	// KeepShare keeps the share of a driver or valet whose last key an owner revokes; without
	// it, their share and role on the car end with that key.
	KeepShare bool `json:"keep_share,omitempty"`
}

// RoleChange is the gateway's answer to a user's removal from a car.
type RoleChange struct {
	VIN         string        `json:"vin"`
	User        string        `json:"user"`
	Role        protocol.Role `json:"role"`         // "none" once removed
	KeysChanged int           `json:"keys_changed"` // keys revoked
	Version     uint64        `json:"version,omitempty"`
}

func keyCall(ctx context.Context, s *Session, method, path string, in, out any) error {
	if s == nil {
		return errors.New("no login session")
	}
	return Call(ctx, method, s.Gateway+path, s.Token, in, out)
}

// PairKey registers the public half of key as a digital key of car vin for the session's
// user, with the role the user holds on the car (its owner, or someone the owner shared it
// with). Only the public key (base64url DER) travels; the gateway derives the key id from it,
// and PairKey checks that it did so correctly.
func PairKey(ctx context.Context, s *Session, key *sign.Signer, vin, label, totp string) (protocol.WhitelistKey, error) {
	if key == nil {
		return protocol.WhitelistKey{}, ErrNoKey
	}
	pub, err := sign.EncodePublic(key.Public())
	if err != nil {
		return protocol.WhitelistKey{}, fmt.Errorf("encode public key: %w", err)
	}
	in := struct {
		VIN       string `json:"vin"`
		PublicKey string `json:"public_key"`
		Label     string `json:"label,omitempty"`
		TOTP      string `json:"totp,omitempty"`
	}{vin, pub, label, totp}
	var k protocol.WhitelistKey
	if err := keyCall(ctx, s, http.MethodPost, "/v1/keys/pair", in, &k); err != nil {
		return k, err
	}
	if k.ID != key.KID() {
		return k, fmt.Errorf("the gateway registered key %q, not this phone's key %q", k.ID, key.KID())
	}
	return k, nil
}

// ListKeys returns the keys of car vin the session's user may see.
func ListKeys(ctx context.Context, s *Session, vin string) (KeyStatus, error) {
	var st KeyStatus
	err := keyCall(ctx, s, http.MethodGet, "/v1/keys?vin="+url.QueryEscape(vin), nil, &st)
	return st, err
}

// ListAllKeys returns the keys of every car the session's user has keys of or owns. It
// expects GET /v1/keys without a VIN to answer {"cars": [KeyStatus…]} (or the bare array); a
// gateway that needs the VIN answers bad_request.
func ListAllKeys(ctx context.Context, s *Session) ([]KeyStatus, error) {
	var raw json.RawMessage
	if err := keyCall(ctx, s, http.MethodGet, "/v1/keys", nil, &raw); err != nil {
		return nil, err
	}
	var list []KeyStatus
	if err := json.Unmarshal(raw, &list); err == nil {
		return list, nil
	}
	var wrapped struct {
		Cars *[]KeyStatus `json:"cars"`
	}
	if err := json.Unmarshal(raw, &wrapped); err != nil || wrapped.Cars == nil {
		return nil, errors.New("gateway answer is not a list of cars")
	}
	return *wrapped.Cars, nil
}

// ShareKey lets sh.User use car sh.VIN with role sh.Role (the session's user must own it).
func ShareKey(ctx context.Context, s *Session, sh Share, totp string) (Share, error) {
	in := struct {
		Share
		TOTP string `json:"totp,omitempty"`
	}{sh, totp}
	var out Share
	err := keyCall(ctx, s, http.MethodPost, "/v1/keys/share", in, &out)
	return out, err
}

// RevokeKey takes key keyID off car vin's whitelist. The gateway refuses to revoke the car's
// last owner key unless allowLastOwner is set: without it nobody could manage the car's keys.
func RevokeKey(ctx context.Context, s *Session, vin, keyID, totp string, allowLastOwner bool) (Revocation, error) {
	return Revoke(ctx, s, RevokeRequest{VIN: vin, KeyID: keyID, TOTP: totp, AllowLastOwner: allowLastOwner})
}

// Revoke is RevokeKey with every option. When an owner revokes the last key of a driver or
// valet, that user's share of the car ends too (Revocation.ShareEnded) unless r.KeepShare.
func Revoke(ctx context.Context, s *Session, r RevokeRequest) (Revocation, error) {
	var out Revocation
	err := keyCall(ctx, s, http.MethodPost, "/v1/keys/revoke", r, &out)
	return out, err
}

// RemoveUser takes user off car vin (the session's user must own it; user must be a driver
// or valet): all their keys are revoked and their share and role end, in one whitelist
// version. They cannot pair again unless shared the car again.
func RemoveUser(ctx context.Context, s *Session, vin, user, totp string) (RoleChange, error) {
	in := struct {
		VIN  string `json:"vin"`
		User string `json:"user"`
		TOTP string `json:"totp,omitempty"`
	}{vin, user, totp}
	var out RoleChange
	err := keyCall(ctx, s, http.MethodPost, "/v1/keys/remove-user", in, &out)
	return out, err
}
