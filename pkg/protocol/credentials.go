package protocol

// Credentials are what a car needs to join the fleet: its MQTT identity and access token, and
// the gateway's public key (base64url DER), with which it checks grants and whitelists; and its
// local-link identity; and the PEM CA certificate that signed the broker's TLS certificate,
// with which it verifies the broker over ssl:// or wss:// (empty when the gateway has no TLS).
// `gateway admin vehicle add --json` prints a list of these and `vehicle-sim run --fleet`
// reads one.
type Credentials struct {
	VIN        string `json:"vin"`
	ClientID   string `json:"client_id"`
	Username   string `json:"username"`
	Token      string `json:"token"`
	GatewayKey string `json:"gateway_key,omitempty"`
	// LinkKey is the private seed (base64url, 32 bytes) of the car's Ed25519 link key, made for
	// the car when it was provisioned (or reissued), and LinkCert the gateway's certification
	// of its public half (a signed LinkCert). With them the car proves itself on the local
	// link; a car without them gets no command from a phone there. Secret, like Token.
	LinkKey  string    `json:"link_key,omitempty"`
	LinkCert *Envelope `json:"link_cert,omitempty"`
	// Cert, CertKey and DeviceCA are set when a device certificate was asked for (`vehicle
	// add --cert`, `reissue --cert`): the car's X.509 client certificate, the private key made
	// for it (both PEM; the key is as secret as the token), and the device CA certificate
	// that signed it (PEM). Over mutual TLS the certificate admits the car instead of the token.
	Cert     string `json:"cert,omitempty"`
	CertKey  string `json:"cert_key,omitempty"`
	DeviceCA string `json:"device_ca,omitempty"`
	CAPEM    string `json:"ca_pem,omitempty"`
}
