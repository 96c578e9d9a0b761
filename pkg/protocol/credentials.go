package protocol

// Credentials are what a car needs to join the fleet: its MQTT identity and access token, and
// the gateway's public key (base64url DER), with which it checks grants and whitelists, and
// the PEM CA certificate that signed the broker's TLS certificate, with which it verifies the
// broker over ssl:// or wss:// (empty when the gateway has no TLS).
// `gateway admin vehicle add --json` prints a list of these and `vehicle-sim run --fleet`
// reads one.
type Credentials struct {
	VIN        string `json:"vin"`
	ClientID   string `json:"client_id"`
	Username   string `json:"username"`
	Token      string `json:"token"`
	GatewayKey string `json:"gateway_key,omitempty"`
	CAPEM      string `json:"ca_pem,omitempty"`
}
