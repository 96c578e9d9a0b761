package api

import "telematics/pkg/protocol"

// AddVehiclesRequest is the body of POST /v1/admin/vehicles: explicit VINs, or a count of
// cars to make up VINs for, or both. The answer is each car's protocol.Credentials.
type AddVehiclesRequest struct {
	VINs  []string `json:"vins,omitempty"`
	Count int      `json:"count,omitempty"`
	// Cert asks for a device certificate for each car besides its token (Credentials.Cert).
	Cert bool `json:"cert,omitempty"`
}

// ReissueRequest is the body of POST /v1/admin/vehicles/{vin}/credentials (it may be empty).
// The answer is the car's new protocol.Credentials; the old token and certificate are refused
// from then on.
type ReissueRequest struct {
	// Cert asks for a new device certificate besides the new token.
	Cert bool `json:"cert,omitempty"`
}

// VehicleView is what the admin API shows of a car (GET /v1/admin/vehicles and
// GET /v1/admin/vehicles/{vin}).
type VehicleView struct {
	VIN       string                   `json:"vin"`
	CreatedMs int64                    `json:"created"`
	Users     map[string]protocol.Role `json:"users,omitempty"`
	// TokenID is the id of the car's current token; a token with another id is refused.
	TokenID string `json:"token_id,omitempty"`
	// CertSerial is the serial number (hex) of the device certificate issued with that token,
	// if one was; a certificate issued with another token is refused.
	CertSerial string `json:"cert_serial,omitempty"`
	// Reissued: the car was given new credentials since it was provisioned.
	Reissued bool `json:"reissued,omitempty"`
	// DecommissionedMs is when the car was taken out of service (0: it is in service).
	DecommissionedMs int64 `json:"decommissioned,omitempty"`
	// RetiredMs is when the car's credentials were retired (0: they work).
	RetiredMs int64 `json:"credentials_retired,omitempty"`
	// Twin is the car's last reported state (nil: it never reported).
	Twin *Twin `json:"twin,omitempty"`
	// Keys is the car's whitelist: version, the version the car acknowledged, and the keys,
	// so an owner or operator sees whether a revocation has reached the car.
	Keys *KeyStatus `json:"keys,omitempty"`
}

// Twin is the gateway's last known state of a car.
type Twin struct {
	VIN          string         `json:"vin"`
	Status       string         `json:"status,omitempty"` // online or offline
	StatusMs     int64          `json:"status_ts,omitempty"`
	TelemetryMs  int64          `json:"telemetry_ts,omitempty"`
	TelemetrySeq uint64         `json:"telemetry_seq,omitempty"`
	Signals      map[string]any `json:"signals,omitempty"`
}

// AssignRequest is the body of POST /v1/admin/vehicles/{vin}/assign. Role RoleNone removes
// the user from the car. The answer is a RoleChange.
type AssignRequest struct {
	User string        `json:"user"`
	Role protocol.Role `json:"role"`
}

// UnassignRequest is the body of POST /v1/admin/vehicles/{vin}/unassign. The answer is a
// RoleChange (role "none").
type UnassignRequest struct {
	User string `json:"user"`
}

// TransferRequest is the body of POST /v1/admin/vehicles/{vin}/transfer.
type TransferRequest struct {
	Owner string `json:"owner"`
}

// Transfer is what a transfer of a car to a new owner did.
type Transfer struct {
	VIN          string   `json:"vin"`
	Owner        string   `json:"owner"`
	UsersRemoved []string `json:"users_removed"`
	KeysRemoved  int      `json:"keys_removed"`
	Version      uint64   `json:"version,omitempty"` // the whitelist without them; 0 if there were no keys
}

// DecommissionRequest is the body of POST /v1/admin/vehicles/{vin}/decommission.
type DecommissionRequest struct {
	// RetireNow retires the car's credentials at once instead of when the car acknowledged
	// its empty whitelist (a car that will not come back, a leaked token).
	RetireNow bool `json:"retire_now,omitempty"`
}

// Decommission is what a decommission did.
type Decommission struct {
	VIN          string   `json:"vin"`
	UsersRemoved []string `json:"users_removed"`
	KeysRemoved  int      `json:"keys_removed"`
	// Version is the car's empty whitelist. Its credentials are retired once the car
	// acknowledges it (CredentialsRetired false until then), or at once with RetireNow.
	Version            uint64 `json:"version"`
	CredentialsRetired bool   `json:"credentials_retired"`
}

// AdminRevokeRequest is the body of POST /v1/admin/vehicles/{vin}/keys/{key_id}/revoke. The
// answer is a Revocation.
type AdminRevokeRequest struct {
	// KeepShare keeps the share of a driver or valet whose last key this is.
	KeepShare bool `json:"keep_share,omitempty"`
}
