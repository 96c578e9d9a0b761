package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"telematics/pkg/protocol"
)

// DefaultTimeout bounds one request of a Client made by NewClient, answer included.
const DefaultTimeout = 15 * time.Second

// MaxAnswerBytes bounds the answer a Client reads (a list of 100,000 provisioned cars fits).
const MaxAnswerBytes = 64 << 20

// Client is a typed client of the gateway's HTTP API. Token is the bearer token every request
// carries: an app token (from Login) for the app's endpoints, the admin token for
// /v1/admin/…; empty for login. Error answers are *Error.
type Client struct {
	// BaseURL is the gateway's URL, e.g. http://127.0.0.1:8080.
	BaseURL string
	// Token is the bearer token ("" sends none).
	Token string
	// HTTP makes the requests.
	HTTP *http.Client
}

// NewClient returns a client of the gateway at baseURL with bearer token (may be empty),
// each request bounded by DefaultTimeout.
func NewClient(baseURL, token string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token, HTTP: &http.Client{Timeout: DefaultTimeout}}
}

// WithToken returns a copy of c that sends token.
func (c *Client) WithToken(token string) *Client {
	cp := *c
	cp.Token = token
	return &cp
}

// Do sends in as JSON (none when in is nil) with method to path (with its query) and decodes
// the answer into out (unless out is nil). An error answer is an *Error; an answer that is not
// the JSON out expects is an error too.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	if c == nil || c.BaseURL == "" {
		return errors.New("no gateway to ask: log in first")
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: DefaultTimeout}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("gateway unreachable: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswerBytes))
	if err != nil {
		return fmt.Errorf("read gateway answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		return ErrorFrom(resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("gateway answer is not the expected JSON: %w", err)
		}
	}
	return nil
}

// ErrorFrom makes the *Error of an error answer with status and body (an ErrorBody; a body
// that is not one leaves reason and message empty).
func ErrorFrom(status int, body []byte) *Error {
	var e ErrorBody
	_ = json.Unmarshal(body, &e)
	return &Error{Status: status, Reason: e.Error, Message: e.Message}
}

// get and post are Do with their method and a typed answer.
func get[T any](ctx context.Context, c *Client, path string) (T, error) {
	var out T
	err := c.Do(ctx, http.MethodGet, path, nil, &out)
	return out, err
}

func post[T any](ctx context.Context, c *Client, path string, in any) (T, error) {
	var out T
	err := c.Do(ctx, http.MethodPost, path, in, &out)
	return out, err
}

// Ready asks GET /readyz: nil when the gateway can serve commands, else an *Error (503) whose
// message says why not.
func (c *Client) Ready(ctx context.Context) error {
	_, err := get[Health](ctx, c, "/readyz")
	return err
}

// GatewayKey asks GET /v1/gateway-key.
func (c *Client) GatewayKey(ctx context.Context) (GatewayKey, error) {
	return get[GatewayKey](ctx, c, "/v1/gateway-key")
}

// Login authenticates user with password (and a TOTP code where the policy needs one). The
// answer's Token is what the app's other calls carry (WithToken).
func (c *Client) Login(ctx context.Context, user, password, totp string) (LoginResponse, error) {
	return post[LoginResponse](ctx, c, "/v1/login", LoginRequest{Username: user, Password: password, TOTP: totp})
}

// ErrNoSessionEndpoint means the gateway does not answer GET /v1/session (an older gateway):
// it cannot tell the app which broker it advertises now.
var ErrNoSessionEndpoint = errors.New("the gateway does not tell its current broker (no GET /v1/session)")

// Session asks GET /v1/session: the token's user and expiry, and the broker the gateway
// advertises now. A gateway without the endpoint gives ErrNoSessionEndpoint.
func (c *Client) Session(ctx context.Context) (SessionResponse, error) {
	out, err := get[SessionResponse](ctx, c, "/v1/session")
	var ae *Error
	if errors.As(err, &ae) && (ae.Status == http.StatusNotFound || ae.Status == http.StatusMethodNotAllowed) {
		return out, ErrNoSessionEndpoint
	}
	return out, err
}

// CurrentBroker asks the gateway which broker it advertises now. A login names the broker of
// its time; when the gateway moved (to a standalone broker, or a new advertise_mqtt_url), this
// is where the app learns the new address.
func (c *Client) CurrentBroker(ctx context.Context) (string, error) {
	out, err := c.Session(ctx)
	if err != nil {
		return "", err
	}
	if out.BrokerURL == "" {
		return "", fmt.Errorf("the gateway named no broker")
	}
	return out.BrokerURL, nil
}

// ChangePassword changes the token's user's password (POST /v1/password). Every token issued
// before, this client's included, stops working; the answer carries a new one.
func (c *Client) ChangePassword(ctx context.Context, oldPassword, newPassword string) (PasswordChanged, error) {
	return post[PasswordChanged](ctx, c, "/v1/password", PasswordRequest{OldPassword: oldPassword, Password: newPassword})
}

// TOTPStatus asks GET /v1/2fa.
func (c *Client) TOTPStatus(ctx context.Context) (TOTPStatus, error) {
	return get[TOTPStatus](ctx, c, "/v1/2fa")
}

// EnrollTOTP starts a TOTP enrollment (POST /v1/2fa/enroll): the answer holds the secret. It
// is active once ConfirmTOTP sent a code of it. Replacing an active enrollment needs proof, a
// current code or a recovery code; "" otherwise.
func (c *Client) EnrollTOTP(ctx context.Context, proof string) (TOTPEnrollment, error) {
	return post[TOTPEnrollment](ctx, c, "/v1/2fa/enroll", TOTPCode{Proof: proof})
}

// ConfirmTOTP activates the pending enrollment with a code of it (POST /v1/2fa/confirm) and
// returns the recovery codes.
func (c *Client) ConfirmTOTP(ctx context.Context, code string) ([]string, error) {
	out, err := post[TOTPConfirmation](ctx, c, "/v1/2fa/confirm", TOTPCode{Code: code})
	return out.RecoveryCodes, err
}

// DisableTOTP ends the enrollment with a current code or a recovery code (POST /v1/2fa/disable).
func (c *Client) DisableTOTP(ctx context.Context, code string) error {
	_, err := post[TOTPDisabled](ctx, c, "/v1/2fa/disable", TOTPCode{Code: code})
	return err
}

// PairKey registers a phone's public key (POST /v1/keys/pair) and returns the new whitelist
// entry, with the role the user holds on the car.
func (c *Client) PairKey(ctx context.Context, r PairRequest) (protocol.WhitelistKey, error) {
	return post[protocol.WhitelistKey](ctx, c, "/v1/keys/pair", r)
}

// ListKeys returns the keys of car vin the token's user may see (GET /v1/keys?vin=).
func (c *Client) ListKeys(ctx context.Context, vin string) (KeyStatus, error) {
	return get[KeyStatus](ctx, c, "/v1/keys?vin="+url.QueryEscape(vin))
}

// ListAllKeys returns the keys of every car the token's user holds a role on (GET /v1/keys):
// a list of KeyStatus, which it also takes wrapped as {"cars": […]}.
func (c *Client) ListAllKeys(ctx context.Context) ([]KeyStatus, error) {
	raw, err := get[json.RawMessage](ctx, c, "/v1/keys")
	if err != nil {
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

// ShareKey lets r.User use car r.VIN with role r.Role (the token's user must own it).
func (c *Client) ShareKey(ctx context.Context, r ShareRequest) (Share, error) {
	return post[Share](ctx, c, "/v1/keys/share", r)
}

// RevokeKey revokes a key of a car (POST /v1/keys/revoke). When an owner revokes the last key
// of a driver or valet, that user's share of the car ends too (Revocation.ShareEnded) unless
// r.KeepShare.
func (c *Client) RevokeKey(ctx context.Context, r RevokeRequest) (Revocation, error) {
	return post[Revocation](ctx, c, "/v1/keys/revoke", r)
}

// RemoveUser takes r.User off car r.VIN (the token's user must own it; r.User must be a driver
// or valet): all their keys are revoked and their share and role end, in one whitelist
// version. They cannot pair again unless shared the car again.
func (c *Client) RemoveUser(ctx context.Context, r RemoveUserRequest) (RoleChange, error) {
	return post[RoleChange](ctx, c, "/v1/keys/remove-user", r)
}

// vehiclePath is the admin API's path of car vin, with more segments.
func vehiclePath(vin string, rest ...string) string {
	p := "/v1/admin/vehicles/" + url.PathEscape(vin)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// AddVehicles provisions cars (admin) and returns each one's credentials.
func (c *Client) AddVehicles(ctx context.Context, r AddVehiclesRequest) ([]protocol.Credentials, error) {
	return post[[]protocol.Credentials](ctx, c, "/v1/admin/vehicles", r)
}

// Vehicles lists every car (admin).
func (c *Client) Vehicles(ctx context.Context) ([]VehicleView, error) {
	return get[[]VehicleView](ctx, c, "/v1/admin/vehicles")
}

// Vehicle shows car vin (admin).
func (c *Client) Vehicle(ctx context.Context, vin string) (VehicleView, error) {
	return get[VehicleView](ctx, c, vehiclePath(vin))
}

// ReissueCredentials gives car vin new credentials (admin); its old token stops working.
func (c *Client) ReissueCredentials(ctx context.Context, vin string) (protocol.Credentials, error) {
	return c.Reissue(ctx, vin, ReissueRequest{})
}

// Reissue is ReissueCredentials with options (a new device certificate).
func (c *Client) Reissue(ctx context.Context, vin string, r ReissueRequest) (protocol.Credentials, error) {
	return post[protocol.Credentials](ctx, c, vehiclePath(vin, "credentials"), r)
}

// Assign gives user role on car vin (admin); RoleNone removes them.
func (c *Client) Assign(ctx context.Context, vin, user string, role protocol.Role) (RoleChange, error) {
	return post[RoleChange](ctx, c, vehiclePath(vin, "assign"), AssignRequest{User: user, Role: role})
}

// Unassign removes user from car vin (admin): their keys revoked, their role and share ended.
func (c *Client) Unassign(ctx context.Context, vin, user string) (RoleChange, error) {
	return post[RoleChange](ctx, c, vehiclePath(vin, "unassign"), UnassignRequest{User: user})
}

// Transfer gives car vin to a new owner (admin): every other user and key is removed.
func (c *Client) Transfer(ctx context.Context, vin, owner string) (Transfer, error) {
	return post[Transfer](ctx, c, vehiclePath(vin, "transfer"), TransferRequest{Owner: owner})
}

// Decommission takes car vin out of service (admin).
func (c *Client) Decommission(ctx context.Context, vin string, retireNow bool) (Decommission, error) {
	return post[Decommission](ctx, c, vehiclePath(vin, "decommission"), DecommissionRequest{RetireNow: retireNow})
}

// AdminRevokeKey revokes key keyID of car vin (admin).
func (c *Client) AdminRevokeKey(ctx context.Context, vin, keyID string, keepShare bool) (Revocation, error) {
	return post[Revocation](ctx, c, vehiclePath(vin, "keys", url.PathEscape(keyID), "revoke"), AdminRevokeRequest{KeepShare: keepShare})
}

// userPath is the admin API's path of user name, with more segments.
func userPath(name string, rest ...string) string {
	p := "/v1/admin/users/" + url.PathEscape(name)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// AddUser creates a user (admin).
func (c *Client) AddUser(ctx context.Context, name, password string) error {
	_, err := post[UserAdded](ctx, c, "/v1/admin/users", AddUserRequest{Username: name, Password: password})
	return err
}

// Users lists every user (admin).
func (c *Client) Users(ctx context.Context) ([]UserView, error) {
	return get[[]UserView](ctx, c, "/v1/admin/users")
}

// UserAction posts one of the admin's changes of user name without a body: "unlock",
// "disable", "enable" or "reset-2fa".
func (c *Client) UserAction(ctx context.Context, name, action string) (UserChange, error) {
	return post[UserChange](ctx, c, userPath(name, action), struct{}{})
}

// SetPassword sets user name's password (admin); every token of theirs ends.
func (c *Client) SetPassword(ctx context.Context, name, password string) (UserChange, error) {
	return post[UserChange](ctx, c, userPath(name, "password"), PasswordRequest{Password: password})
}

// DeleteUser removes user name (admin); refused while they hold a role on a car unless
// fromCars, which first removes them from every car.
func (c *Client) DeleteUser(ctx context.Context, name string, fromCars bool) (UserChange, error) {
	path := userPath(name)
	if fromCars {
		path += "?from_cars=true"
	}
	var out UserChange
	err := c.Do(ctx, http.MethodDelete, path, nil, &out)
	return out, err
}

// Audit queries the audit log (admin), newest first.
func (c *Client) Audit(ctx context.Context, q AuditQuery) ([]AuditEvent, error) {
	v := url.Values{}
	for key, val := range map[string]string{"vin": q.VIN, "user": q.User, "kind": q.Kind} {
		if val != "" {
			v.Set(key, val)
		}
	}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.SinceMs != 0 {
		v.Set("since", strconv.FormatInt(q.SinceMs, 10))
	}
	if q.UntilMs != 0 {
		v.Set("until", strconv.FormatInt(q.UntilMs, 10))
	}
	return get[[]AuditEvent](ctx, c, "/v1/admin/audit?"+v.Encode())
}

// Stats asks the gateway's counters (admin).
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	return get[Stats](ctx, c, "/v1/admin/stats")
}
