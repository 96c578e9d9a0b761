package api

// Fields of types the server used to write as JSON maps are in alphabetical order: that is the
// order a map's keys were encoded in, so the bytes on the wire stay the same.

// LoginRequest is the body of POST /v1/login.
type LoginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
	TOTP     string `json:"totp,omitempty"`
}

// LoginResponse is what a successful login returns: an app token for the user, the prefix of
// the MQTT client ids the user may connect with, the broker to connect to, and the gateway's
// public key (base64url DER) that signs what cars are told.
type LoginResponse struct {
	User           string `json:"user"`
	Token          string `json:"token"`
	ExpiresAtMs    int64  `json:"expires_at"`
	ClientIDPrefix string `json:"client_id_prefix"`
	BrokerURL      string `json:"broker_url"`
	GatewayKey     string `json:"gateway_key"`
	// GatewayKeys are every key the gateway signs with (base64url DER): GatewayKey and, during
	// a signing-key rotation, the previous one. A phone accepts a car's local-link
	// certification signed by any of them (cars provisioned before the rotation hold one
	// signed by the previous key until they are reissued).
	GatewayKeys []string `json:"gateway_keys,omitempty"`
}

// SessionResponse is GET /v1/session: what the gateway tells a logged-in app now. The broker
// it names may differ from the one the login named (the gateway moved to a standalone broker,
// or advertise_mqtt_url changed); an app whose broker does not answer asks here.
type SessionResponse struct {
	User        string `json:"user"`
	ExpiresAtMs int64  `json:"expires_at"`
	BrokerURL   string `json:"broker_url"`
}

// PasswordRequest is the body of POST /v1/admin/users/{user}/password (Password) and of
// POST /v1/password (OldPassword and Password).
type PasswordRequest struct {
	OldPassword string `json:"old_password,omitempty"`
	Password    string `json:"password"`
}

// PasswordChanged is the answer to POST /v1/password: a new app token, since every token
// issued before the change is refused from now on.
type PasswordChanged struct {
	ExpiresAtMs int64  `json:"expires_at"`
	Token       string `json:"token"`
	User        string `json:"user"`
}

// TOTPStatus is GET /v1/2fa: the user's enrollment, the recovery codes left, the gateway's
// 2FA policy mode (off, enrolled, required) and the end of a running lockout (RFC 3339).
type TOTPStatus struct {
	Enrolled          bool   `json:"enrolled"`
	LockedUntil       string `json:"locked_until,omitempty"`
	Mode              string `json:"mode"`
	Pending           bool   `json:"pending"`
	RecoveryCodesLeft int    `json:"recovery_codes_left"`
}

// TOTPCode is the body of POST /v1/2fa/enroll (Proof: a current code or a recovery code,
// needed to replace an active enrollment), /v1/2fa/confirm and /v1/2fa/disable (Code).
type TOTPCode struct {
	Code  string `json:"code,omitempty"`
	Proof string `json:"proof,omitempty"`
}

// TOTPEnrollment is the answer to POST /v1/2fa/enroll: the secret as an otpauth:// URL, as
// base32 text, and as a QR code (PNG, standard base64). The enrollment is pending until a
// code of it is confirmed.
type TOTPEnrollment struct {
	OTPAuthURL string `json:"otpauth_url"`
	QRPNG      string `json:"qr_png"`
	Secret     string `json:"secret"`
}

// TOTPConfirmation is the answer to POST /v1/2fa/confirm: ten single-use recovery codes,
// shown only this once.
type TOTPConfirmation struct {
	RecoveryCodes []string `json:"recovery_codes"`
}

// TOTPDisabled is the answer to POST /v1/2fa/disable.
type TOTPDisabled struct {
	Enrolled bool `json:"enrolled"`
}
