// Package protocol holds the wire contract shared by the broker, the gateway, the cars and the
// phones: topic names, message types, reason codes, actions and roles, and the validation of
// identifiers. docs/PROTOCOL.md is the normative description; this package is its code.
package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Version is the value of the "v" field of every message this build writes.
const Version = 1

// MaxPayloadBytes bounds every JSON message the gateway or a car decodes. The broker's packet
// limit is a little larger so that an oversized payload reaches the gateway and is answered
// with bad_request instead of a dropped connection.
const MaxPayloadBytes = 16 * 1024

// Reason is one of the closed list of refusal reasons. The same strings are used on MQTT,
// in HTTP error bodies, in the audit log and in metrics.
type Reason string

// The closed list of reasons (docs/PROTOCOL.md, "Reasons").
const (
	ReasonNone                   Reason = ""
	ReasonBadRequest             Reason = "bad_request"
	ReasonUnauthenticated        Reason = "unauthenticated"
	ReasonForbidden              Reason = "forbidden"
	ReasonVehicleUnknown         Reason = "vehicle_unknown"
	ReasonVehicleOffline         Reason = "vehicle_offline"
	ReasonTOTPRequired           Reason = "totp_required"
	ReasonTOTPInvalid            Reason = "totp_invalid"
	ReasonTOTPReplayed           Reason = "totp_replayed"
	ReasonTOTPEnrollmentRequired Reason = "totp_enrollment_required"
	ReasonLockedOut              Reason = "locked_out"
	ReasonRateLimited            Reason = "rate_limited"
	ReasonDuplicate              Reason = "duplicate"
	ReasonSignatureInvalid       Reason = "signature_invalid"
	ReasonKeyUnknown             Reason = "key_unknown"
	ReasonKeyRevoked             Reason = "key_revoked"
	ReasonKeyExpired             Reason = "key_expired"
	ReasonExpired                Reason = "expired"
	ReasonInternal               Reason = "internal"
)

// Reasons lists every valid reason, in documentation order.
var Reasons = []Reason{
	ReasonBadRequest, ReasonUnauthenticated, ReasonForbidden, ReasonVehicleUnknown,
	ReasonVehicleOffline, ReasonTOTPRequired, ReasonTOTPInvalid, ReasonTOTPReplayed,
	ReasonTOTPEnrollmentRequired, ReasonLockedOut, ReasonRateLimited, ReasonDuplicate,
	ReasonSignatureInvalid, ReasonKeyUnknown, ReasonKeyRevoked, ReasonKeyExpired,
	ReasonExpired, ReasonInternal,
}

// Valid reports whether r is on the closed list.
func (r Reason) Valid() bool {
	for _, x := range Reasons {
		if r == x {
			return true
		}
	}
	return false
}

// Refusal is an error that carries the reason a client is told. Internal detail stays in Err
// (for the log); Reason is all the client sees.
type Refusal struct {
	Reason Reason
	Err    error
}

func (e *Refusal) Error() string {
	if e.Err == nil {
		return string(e.Reason)
	}
	return fmt.Sprintf("%s: %v", e.Reason, e.Err)
}

func (e *Refusal) Unwrap() error { return e.Err }

// Refuse builds a Refusal with a formatted detail.
func Refuse(r Reason, format string, args ...any) error {
	return &Refusal{Reason: r, Err: fmt.Errorf(format, args...)}
}

// ReasonOf maps any error to the reason a client is told: the Refusal's reason if there is one
// in the chain, internal otherwise. This is the one place errors become reasons.
func ReasonOf(err error) Reason {
	if err == nil {
		return ReasonNone
	}
	var r *Refusal
	if errors.As(err, &r) && r.Reason.Valid() {
		return r.Reason
	}
	return ReasonInternal
}

// Action is a vehicle command.
type Action string

// The actions a car understands.
const (
	ActionLock        Action = "lock"
	ActionUnlock      Action = "unlock"
	ActionOpenTrunk   Action = "open_trunk"
	ActionHonk        Action = "honk"
	ActionFlash       Action = "flash"
	ActionClimateOn   Action = "climate_on"
	ActionClimateOff  Action = "climate_off"
	ActionChargeStart Action = "charge_start"
	ActionChargeStop  Action = "charge_stop"
	ActionRemoteStart Action = "remote_start"
	ActionLocate      Action = "locate"
)

// Actions lists every action.
var Actions = []Action{
	ActionLock, ActionUnlock, ActionOpenTrunk, ActionHonk, ActionFlash, ActionClimateOn,
	ActionClimateOff, ActionChargeStart, ActionChargeStop, ActionRemoteStart, ActionLocate,
}

// Valid reports whether a is a known action.
func (a Action) Valid() bool {
	for _, x := range Actions {
		if a == x {
			return true
		}
	}
	return false
}

// Role is what a user may do with a car (key roles) or what a token's holder is (token roles).
type Role string

// Key roles: what a user may do with one car.
const (
	RoleOwner  Role = "owner"
	RoleDriver Role = "driver"
	RoleValet  Role = "valet"
)

// Token roles: who holds an access token.
const (
	RoleVehicle Role = "vehicle"
	RoleApp     Role = "app"
	RoleGateway Role = "gateway"
	RoleAdmin   Role = "admin"
)

// ValidKeyRole reports whether r is owner, driver or valet.
func ValidKeyRole(r Role) bool { return r == RoleOwner || r == RoleDriver || r == RoleValet }

// Allows reports whether a key of role r may perform action a: owners and drivers all
// actions, valets lock, unlock and locate.
func (r Role) Allows(a Action) bool {
	switch r {
	case RoleOwner, RoleDriver:
		return a.Valid()
	case RoleValet:
		return a == ActionLock || a == ActionUnlock || a == ActionLocate
	}
	return false
}

var (
	// A VIN per ISO 3779: 17 characters, digits and capital letters without I, O and Q.
	vinRE = regexp.MustCompile(`^[A-HJ-NPR-Z0-9]{17}$`)
	// User names are topic-safe and contain no '-', because an app's client id is
	// "{user}-{suffix}": with '-' allowed, user "bob" could take user "bob-x"'s session.
	userRE = regexp.MustCompile(`^[a-z0-9_.]{1,64}$`)
)

// ValidVIN reports whether s is a well-formed VIN.
func ValidVIN(s string) bool { return vinRE.MatchString(s) }

// ValidUser reports whether s is a well-formed user name that is not reserved.
func ValidUser(s string) bool {
	if !userRE.MatchString(s) || s == "." || s == ".." {
		return false
	}
	switch s {
	case "gateway", "admin", "broker":
		return false
	}
	return true
}

// Topic families. A vehicle publishes and subscribes only under VehiclePrefix+VIN, an app only
// under AppPrefix+user.
const (
	VehiclePrefix = "v/"
	AppPrefix     = "app/"
)

// Vehicle topic suffixes.
const (
	SuffixTelemetry = "telemetry"
	SuffixStatus    = "status"
	SuffixCmd       = "cmd"
	SuffixResult    = "result"
	SuffixKeys      = "keys"
	SuffixKeysAck   = "keys/ack"
	SuffixEvents    = "events"
	SuffixEventsAck = "events/ack"
	SuffixReply     = "reply"
)

// VehicleTopic returns v/{vin}/{suffix}.
func VehicleTopic(vin, suffix string) string { return VehiclePrefix + vin + "/" + suffix }

// AppTopic returns app/{user}/{suffix}.
func AppTopic(user, suffix string) string { return AppPrefix + user + "/" + suffix }

// ParseVehicleTopic splits v/{vin}/{suffix}; ok is false for anything else.
func ParseVehicleTopic(topic string) (vin, suffix string, ok bool) {
	rest, found := strings.CutPrefix(topic, VehiclePrefix)
	if !found {
		return "", "", false
	}
	vin, suffix, found = strings.Cut(rest, "/")
	if !found || !ValidVIN(vin) {
		return "", "", false
	}
	return vin, suffix, true
}

// ParseAppTopic splits app/{user}/{suffix}; ok is false for anything else.
func ParseAppTopic(topic string) (user, suffix string, ok bool) {
	rest, found := strings.CutPrefix(topic, AppPrefix)
	if !found {
		return "", "", false
	}
	user, suffix, found = strings.Cut(rest, "/")
	if !found || !ValidUser(user) {
		return "", "", false
	}
	return user, suffix, true
}

// Status values on v/{vin}/status.
const (
	StatusOnline  = "online"
	StatusOffline = "offline"
)

// CarTokenPrefix starts the topics v/_tokens/{vin} on which the gateway tells a broker that
// runs apart from it (the standalone broker) a car's current token (CarToken, signed,
// retained). They sit in the gateway's tree, where only the gateway may publish; "_tokens" is
// no VIN, so no car or app can read them.
const CarTokenPrefix = "v/_tokens/"

// CarTokenFilter subscribes to every car's CarToken.
const CarTokenFilter = CarTokenPrefix + "+"

// CarToken names the id (jti) of the one current token of a car whose credentials were
// reissued; a broker refuses that car's other tokens. Signed by the gateway; a broker takes only
// one newer (issued_at) than the one it has for that car.
type CarToken struct {
	V          int    `json:"v"`
	VIN        string `json:"vin"`
	JTI        string `json:"jti"`
	IssuedAtMs int64  `json:"issued_at"`
}

// VehicleStatus is the retained message on v/{vin}/status; the will carries "offline".
type VehicleStatus struct {
	V      int    `json:"v"`
	Status string `json:"status"`
	TsMs   int64  `json:"ts"`
}

// TelemetrySeqBlock is how many telemetry sequence numbers a car reserves at a time. A car
// that restarts continues with the next block, at a seq of the form k×TelemetrySeqBlock+1, so
// a receiver does not count the unused rest of the previous block as lost.
const TelemetrySeqBlock = 256

// Telemetry is published on v/{vin}/telemetry; signals are keyed by COVESA VSS paths.
type Telemetry struct {
	V       int            `json:"v"`
	TsMs    int64          `json:"ts"`
	Seq     uint64         `json:"seq,omitempty"`
	Signals map[string]any `json:"signals"`
}

// VSS paths the simulated cars publish.
const (
	VSSSpeed     = "Vehicle.Speed"
	VSSLatitude  = "Vehicle.CurrentLocation.Latitude"
	VSSLongitude = "Vehicle.CurrentLocation.Longitude"
	VSSSoC       = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
	VSSIsLocked  = "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"
	VSSCharging  = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
	VSSClimate   = "Vehicle.Cabin.HVAC.IsAirConditioningActive"
	VSSTrunkOpen = "Vehicle.Body.Trunk.Rear.IsOpen"
	VSSRunning   = "Vehicle.Powertrain.CombustionEngine.IsRunning"
	// VSSTraveledDistance is the odometer (km).
	VSSTraveledDistance = "Vehicle.TraveledDistance"
)

// Command is the document a phone signs: what to do to which car, valid until ExpiresAtMs.
type Command struct {
	V           int             `json:"v"`
	ID          string          `json:"id"`
	VIN         string          `json:"vin"`
	Action      Action          `json:"action"`
	Params      json.RawMessage `json:"params,omitempty"`
	KeyID       string          `json:"key_id,omitempty"`
	User        string          `json:"user,omitempty"`
	IssuedAtMs  int64           `json:"issued_at"`
	ExpiresAtMs int64           `json:"expires_at"`
	Nonce       string          `json:"nonce,omitempty"`
}

// DefaultCommandLifetimeMs is how long a command stays valid unless the app asks otherwise.
const DefaultCommandLifetimeMs = 10_000

// MaxCommandAheadMs is how far in the future a car accepts a command's expiry: it bounds how
// long a car's replay cache must remember ids.
const MaxCommandAheadMs = 30_000

// Check validates the fields a command must have, without any clock.
func (c *Command) Check() error {
	switch {
	case c.V != Version:
		return Refuse(ReasonBadRequest, "unsupported version %d", c.V)
	case !ValidID(c.ID):
		return Refuse(ReasonBadRequest, "command id missing or malformed")
	case !ValidVIN(c.VIN):
		return Refuse(ReasonBadRequest, "malformed vin %q", truncate(c.VIN))
	case !c.Action.Valid():
		return Refuse(ReasonBadRequest, "unknown action %q", truncate(string(c.Action)))
	case c.ExpiresAtMs <= 0 || c.IssuedAtMs <= 0 || c.ExpiresAtMs < c.IssuedAtMs:
		return Refuse(ReasonBadRequest, "issued_at and expires_at must be unix milliseconds, issued before expiry")
	}
	return nil
}

// ValidID accepts the ids commands carry: 1 to 64 characters of [A-Za-z0-9_-].
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// AppRequest is what an app publishes on app/{user}/cmd: the signed command, plus a TOTP code
// when the action needs one.
type AppRequest struct {
	V       int      `json:"v"`
	Command Envelope `json:"command"`
	TOTP    string   `json:"totp,omitempty"`
}

// Grant is the gateway's signed statement that it authorized one command for one car.
type Grant struct {
	V           int      `json:"v"`
	CmdSHA256   string   `json:"cmd_sha256"`
	VIN         string   `json:"vin"`
	User        string   `json:"user"`
	Factors     []string `json:"factors"`
	ExpiresAtMs int64    `json:"expires_at"`
}

// VehicleCommand is what the gateway publishes on v/{vin}/cmd.
type VehicleCommand struct {
	V       int      `json:"v"`
	Command Envelope `json:"command"`
	Grant   Envelope `json:"grant"`
}

// Result statuses a car reports on v/{vin}/result.
const (
	ResultExecuted = "executed"
	ResultRejected = "rejected"
)

// Result is what a car publishes after handling a command.
type Result struct {
	V      int            `json:"v"`
	ID     string         `json:"id"`
	Status string         `json:"status"`
	Reason Reason         `json:"reason,omitempty"`
	State  map[string]any `json:"state,omitempty"`
	TsMs   int64          `json:"ts"`
	// Message says, on a refusal for the car's state (reason forbidden: "the trunk cannot open
	// while the car moves"), what the state forbids, for the user. At most MaxMessageBytes;
	// never internal detail.
	Message string `json:"message,omitempty"`
}

// MaxMessageBytes bounds the car's message in a Result and a Reply.
const MaxMessageBytes = 200

// Reply statuses the gateway sends on app/{user}/reply.
const (
	ReplyAccepted = "accepted"
	ReplyRejected = "rejected"
	ReplyExecuted = "executed"
	ReplyFailed   = "failed"
	ReplyExpired  = "expired"
)

// Terminal reports whether a reply status ends a request's life.
func Terminal(status string) bool {
	return status == ReplyRejected || status == ReplyExecuted || status == ReplyFailed || status == ReplyExpired
}

// Reply is what the gateway sends an app about one request. Every request gets exactly one
// terminal reply.
type Reply struct {
	V      int            `json:"v"`
	ID     string         `json:"id"`
	Status string         `json:"status"`
	Reason Reason         `json:"reason,omitempty"`
	VIN    string         `json:"vin,omitempty"`
	Action Action         `json:"action,omitempty"`
	State  map[string]any `json:"state,omitempty"`
	TsMs   int64          `json:"ts"`
	// CarTsMs is the car's Result.TsMs, on a terminal reply relayed from the car's result, so
	// the app can tell the car's share of the time from the cloud's.
	CarTsMs int64 `json:"car_ts,omitempty"`
	// Message is the car's Message, relayed on the terminal reply of a refusal for the car's
	// state, so the user learns why ("the trunk cannot open while the car moves").
	Message string `json:"message,omitempty"`
}

// Decode unmarshals a bounded JSON payload into v, refusing unknown fields is not done on
// purpose (newer peers may add fields), but oversized or malformed input is bad_request.
func Decode(payload []byte, v any) error {
	if len(payload) > MaxPayloadBytes {
		return Refuse(ReasonBadRequest, "payload of %d bytes exceeds %d", len(payload), MaxPayloadBytes)
	}
	if err := json.Unmarshal(payload, v); err != nil {
		return Refuse(ReasonBadRequest, "malformed json: %v", err)
	}
	return nil
}
