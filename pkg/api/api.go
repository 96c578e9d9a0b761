// Package api is the gateway's HTTP API contract: the request and response bodies of every
// endpoint (login, session, TOTP, password, digital keys, and the admin API's vehicles, users,
// audit and stats), the error body, and Client, a typed client of that API. The gateway's
// server (gateway/httpapi) encodes these types and every client decodes them, so the wire
// format is written down once; docs/PROTOCOL.md describes it.
package api

import (
	"fmt"

	"telematics/pkg/protocol"
)

// ErrorBody is the body of every error answer: a reason from the protocol's closed list and
// a text for people.
type ErrorBody struct {
	Error   protocol.Reason `json:"error"`
	Message string          `json:"message"`
}

// Error is an error answer from the gateway's HTTP API (or from a car's local link, which
// answers in the same form): the HTTP status and the body's reason and message.
type Error struct {
	Status  int
	Reason  protocol.Reason
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("gateway answered %d %s", e.Status, e.Reason)
	}
	return fmt.Sprintf("%s: %s", e.Reason, e.Message)
}

// Health is GET /healthz and GET /readyz: "ok", "ready", or "not ready" with the cause.
type Health struct {
	Message string `json:"message,omitempty"`
	Status  string `json:"status"`
}

// GatewayKey is GET /v1/gateway-key: the key id and public key (base64url DER) that sign the
// gateway's grants and whitelists.
type GatewayKey struct {
	KID       string `json:"kid"`
	PublicKey string `json:"public_key"`
}

// Stats is GET /v1/admin/stats: the gateway's telemetry and command counters.
type Stats struct {
	CarsReporting     int    `json:"cars_reporting"`
	PendingCommands   int    `json:"pending_commands"`
	TelemetryLost     uint64 `json:"telemetry_lost"`
	TelemetryReceived uint64 `json:"telemetry_received"`
}
