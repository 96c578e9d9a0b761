package api

import "telematics/pkg/protocol"

// KeyStatus is one car's whitelist as the gateway shows it (GET /v1/keys?vin=, and the admin
// API's vehicle view): the owner and the admin see every key of the car, anyone else only
// their own. Version is the newest whitelist the gateway issued for the car, AckedVersion the
// newest the car confirmed it stored: until they are equal (InSync), the last change (a
// revocation, say) has not reached the car, and the car still decides by the older list on
// its local link.
type KeyStatus struct {
	VIN          string                  `json:"vin"`
	Version      uint64                  `json:"version"`
	AckedVersion uint64                  `json:"acked_version"`
	AckedMs      int64                   `json:"acked_ts,omitempty"`
	InSync       bool                    `json:"in_sync"`
	Keys         []protocol.WhitelistKey `json:"keys"`
}

// PairRequest is the body of POST /v1/keys/pair: the public half of a phone's key (base64url
// DER) to register as a digital key of the car; the gateway derives the key id from it. The
// answer is the new whitelist entry (protocol.WhitelistKey).
type PairRequest struct {
	VIN       string `json:"vin"`
	PublicKey string `json:"public_key"`
	Label     string `json:"label,omitempty"`
	TOTP      string `json:"totp,omitempty"`
}

// ShareRequest is the body of POST /v1/keys/share: an owner lets User use the car with Role
// (driver or valet) until NotAfterMs (unix ms; 0: no expiry), on Channels (empty: the
// gateway's default, both). That user then pairs their own phone's key.
type ShareRequest struct {
	VIN        string        `json:"vin"`
	User       string        `json:"user"`
	Role       protocol.Role `json:"role"`
	NotAfterMs int64         `json:"not_after"`
	Channels   []string      `json:"channels,omitempty"`
	TOTP       string        `json:"totp,omitempty"`
}

// Share is what an owner granted another user on one car: the answer to POST /v1/keys/share.
type Share struct {
	VIN        string        `json:"vin"`
	User       string        `json:"user"`
	Role       protocol.Role `json:"role"`
	NotAfterMs int64         `json:"not_after,omitempty"` // unix ms; 0: no expiry
	Channels   []string      `json:"channels"`
	By         string        `json:"by"`
	CreatedMs  int64         `json:"created"`
}

// RevokeRequest is the body of POST /v1/keys/revoke.
type RevokeRequest struct {
	VIN   string `json:"vin"`
	KeyID string `json:"key_id"`
	TOTP  string `json:"totp,omitempty"`
	// AllowLastOwner allows revoking the car's last owner key.
	AllowLastOwner bool `json:"allow_last_owner"`
	// KeepShare keeps the share of a driver or valet whose last key an owner revokes. Without
	// it their share and role on the car end with that key: they cannot pair another phone
	// until an owner shares the car with them again.
	KeepShare bool `json:"keep_share,omitempty"`
}

// Revocation is what a revocation did (POST /v1/keys/revoke, and the admin's
// POST /v1/admin/vehicles/{vin}/keys/{key_id}/revoke): the whitelist version that no longer
// holds the key. The car has it once KeyStatus.AckedVersion reaches Version.
type Revocation struct {
	VIN     string `json:"vin"`
	KeyID   string `json:"key_id"`
	User    string `json:"user"`    // whose key it was
	Version uint64 `json:"version"` // the whitelist version without it
	// ShareEnded: the key was the last of a driver or valet, and their share and role on the
	// car ended with it (they cannot pair again unless shared the car again).
	ShareEnded bool `json:"share_ended"`
}

// RemoveUserRequest is the body of POST /v1/keys/remove-user: an owner takes a driver or
// valet off the car.
type RemoveUserRequest struct {
	VIN  string `json:"vin"`
	User string `json:"user"`
	TOTP string `json:"totp,omitempty"`
}

// RoleNone is the role that removes a user from a car (AssignRequest, RoleChange).
const RoleNone protocol.Role = "none"

// RoleChange is what a role change did: the answer to POST /v1/keys/remove-user and to the
// admin's assign and unassign.
type RoleChange struct {
	VIN  string        `json:"vin"`
	User string        `json:"user"`
	Role protocol.Role `json:"role"` // RoleNone: the user was removed from the car
	// KeysChanged is how many of the user's keys were rewritten with the new role, or revoked
	// when the user was removed.
	KeysChanged int `json:"keys_changed"`
	// Version is the whitelist version that carries the change to the car; 0 when no key
	// changed (the user had paired none).
	Version uint64 `json:"version,omitempty"`
}
