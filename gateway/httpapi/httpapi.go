// Package httpapi is the gateway's HTTP surface: health and readiness, app login, and the admin
// API that provisions vehicles and users. Errors are JSON {"error": reason, "message": text}
// with the reason from the protocol's closed list.
package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/keys"
	"telematics/gateway/store"
	"telematics/pkg/clock"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
)

// Twins reads the live vehicle twin.
type Twins interface {
	Twin(vin string) (store.Twin, bool)
}

// LoginGuard is the second-factor policy for password login (package twofa), asked once the
// password was right. Nil means passwords alone log in.
type LoginGuard interface {
	// BeforeLogin refuses a user whose second factor is locked out.
	BeforeLogin(user string) error
	// AfterPassword checks the TOTP code a login needs under the policy ("" if none given).
	AfterPassword(user, session, code string) error
}

// API serves the gateway's HTTP endpoints.
type API struct {
	Store      *store.Store
	Audit      *audit.Log
	Issuer     *token.Issuer
	GatewayKey *sign.Signer
	// CarKey is the gateway key a car's credentials name: the one its whitelists and grants
	// are signed with (during a rotation, the previous key until the car made the hop).
	CarKey      func(vin string) *sign.Signer
	Twins       Twins
	Guard       LoginGuard
	AdminToken  string
	AllowRemote bool
	// Clock tells the time for tokens, audit records and login limits (nil: the real clock).
	Clock clock.Clock
	Log   *slog.Logger
	// Ready reports whether the gateway can serve commands (store open, bus connected).
	Ready func() error
	// BrokerURL is what apps are told to connect to.
	BrokerURL       string
	AppTokenTTL     time.Duration
	VehicleTokenTTL time.Duration
	PasswordParams  accounts.Params
	// Hashes bounds the password hashes computed at once (nil: one per CPU, 5 s wait).
	Hashes *accounts.Gate
	// Lockout counts wrong passwords per user name (nil: 5 in 5 minutes lock for 15).
	Lockout *accounts.Lockout
	// LoginRatePerMinute and LoginBurst limit failed logins per client address (0: no limit).
	LoginRatePerMinute float64
	LoginBurst         int
	// TokenRetired is told a car's new token id once its credentials were reissued, so the
	// broker refuses the old token and closes its sessions (nil: nobody is told).
	TokenRetired func(vin, currentJTI string)
	// TokensEnded is told a user whose app tokens were ended (password changed, account
	// disabled or deleted), so the broker closes their sessions (nil: nobody is told).
	TokensEnded func(user string)
	// Metrics serves GET /metrics in Prometheus' format, behind the admin token (nil: not
	// served).
	Metrics http.Handler
	// Stats reports counters for GET /v1/admin/stats (nil: not served).
	Stats func() any
	// KeyStatus reports a car's whitelist versions for the admin API (nil: not shown).
	KeyStatus func(vin string) keys.Status
	// Keys changes who is on a car (assign, unassign, transfer, decommission, key revocation):
	// every role change goes through it, with the user's keys and a new whitelist version.
	Keys *keys.Service
	// Extra routes (2FA, keys) registered by other packages.
	Extra func(mux *http.ServeMux)

	dummyOnce sync.Once
	gateOnce  sync.Once
	dummy     string
	loginOnce sync.Once
	perAddr   *addrLimiter
}

// maxBody bounds every request body.
const maxBody = 64 * 1024

// Handler returns the routed handler.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.Ready != nil {
			if err := a.Ready(); err != nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "message": err.Error()})
				return
			}
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("GET /v1/gateway-key", a.gatewayKey)
	mux.HandleFunc("POST /v1/login", a.login)
	mux.Handle("POST /v1/admin/vehicles", a.admin(a.addVehicles))
	mux.Handle("GET /v1/admin/vehicles", a.admin(a.listVehicles))
	mux.Handle("GET /v1/admin/vehicles/{vin}", a.admin(a.showVehicle))
	mux.Handle("POST /v1/admin/vehicles/{vin}/assign", a.admin(a.assign))
	mux.Handle("POST /v1/admin/vehicles/{vin}/credentials", a.admin(a.reissue))
	a.vehicleAdminRoutes(mux)
	mux.Handle("POST /v1/admin/users", a.admin(a.addUser))
	mux.Handle("GET /v1/admin/audit", a.admin(a.queryAudit))
	if a.Metrics != nil {
		mux.Handle("GET /metrics", a.admin(a.Metrics.ServeHTTP))
	}
	if a.Stats != nil {
		mux.Handle("GET /v1/admin/stats", a.admin(func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, a.Stats())
		}))
	}
	if a.Extra != nil {
		a.Extra(mux)
	}
	return mux
}

// Error writes the JSON error form.
func Error(w http.ResponseWriter, status int, reason protocol.Reason, msg string) {
	writeJSON(w, status, map[string]string{"error": string(reason), "message": msg})
}

// StatusOf maps a reason to its HTTP status.
func StatusOf(r protocol.Reason) int {
	switch r {
	case protocol.ReasonBadRequest:
		return http.StatusBadRequest
	case protocol.ReasonUnauthenticated, protocol.ReasonTOTPRequired, protocol.ReasonTOTPInvalid,
		protocol.ReasonTOTPReplayed, protocol.ReasonSignatureInvalid:
		return http.StatusUnauthorized
	case protocol.ReasonForbidden, protocol.ReasonTOTPEnrollmentRequired, protocol.ReasonKeyRevoked,
		protocol.ReasonKeyExpired, protocol.ReasonKeyUnknown:
		return http.StatusForbidden
	case protocol.ReasonVehicleUnknown:
		return http.StatusNotFound
	case protocol.ReasonDuplicate:
		return http.StatusConflict
	case protocol.ReasonLockedOut, protocol.ReasonRateLimited:
		return http.StatusTooManyRequests
	case protocol.ReasonVehicleOffline:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// Fail writes err as a JSON error with the status of its reason; internal detail is logged,
// not shown.
func Fail(w http.ResponseWriter, log *slog.Logger, err error) {
	reason := protocol.ReasonOf(err)
	msg := err.Error()
	var ref *protocol.Refusal
	if errors.As(err, &ref) && ref.Err != nil {
		msg = ref.Err.Error() // the reason is in "error" already
	}
	if reason == protocol.ReasonInternal {
		log.Error("request failed", "err", err)
		msg = "internal error; see the gateway log"
	}
	Error(w, StatusOf(reason), reason, msg)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteJSON writes v with status.
func WriteJSON(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }

// DecodeBody reads a bounded JSON body into v.
func DecodeBody(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return protocol.Refuse(protocol.ReasonBadRequest, "read body: %v", err)
	}
	if len(b) > maxBody {
		return protocol.Refuse(protocol.ReasonBadRequest, "body larger than %d bytes", maxBody)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return protocol.Refuse(protocol.ReasonBadRequest, "malformed JSON body: %v", err)
	}
	return nil
}

// BearerClaims verifies the request's app token and returns its claims.
func (a *API) BearerClaims(r *http.Request, v *token.Verifier) (*token.Claims, error) {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return nil, protocol.Refuse(protocol.ReasonUnauthenticated, "missing bearer token")
	}
	c, err := v.Verify(raw)
	if err != nil || c.Role != protocol.RoleApp {
		return nil, protocol.Refuse(protocol.ReasonUnauthenticated, "invalid or expired token; log in again")
	}
	if err := a.CheckAppToken(c.Subject, c.Gen); err != nil {
		return nil, err
	}
	return c, nil
}

func (a *API) gatewayKey(w http.ResponseWriter, _ *http.Request) {
	pub, err := sign.EncodePublic(a.GatewayKey.Public())
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"kid": a.GatewayKey.KID(), "public_key": pub})
}

// LoginRequest is the body of POST /v1/login.
type LoginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
	TOTP     string `json:"totp,omitempty"`
}

// LoginResponse is what a successful login returns.
type LoginResponse struct {
	User           string `json:"user"`
	Token          string `json:"token"`
	ExpiresAtMs    int64  `json:"expires_at"`
	ClientIDPrefix string `json:"client_id_prefix"`
	BrokerURL      string `json:"broker_url"`
	GatewayKey     string `json:"gateway_key"`
}

func (a *API) login(w http.ResponseWriter, r *http.Request) {
	var req LoginRequest
	if err := DecodeBody(r, &req); err != nil {
		Fail(w, a.Log, err)
		return
	}
	ip := clientIP(r)
	// Every attempt takes a token from its address's bucket, before anything is checked or
	// written; a successful login gives it back.
	if !a.loginLimits().take(ip) {
		Error(w, http.StatusTooManyRequests, protocol.ReasonRateLimited, "too many failed logins from this address; wait a few minutes")
		return
	}
	// A name no user can have is refused before any write: nothing a stranger sends reaches
	// the audit log unchecked (an audit record is bounded anyway).
	if !protocol.ValidUser(req.Username) {
		a.Log.Debug("login refused: malformed user name", "bytes", len(req.Username), "remote", ip)
		Error(w, http.StatusUnauthorized, protocol.ReasonUnauthenticated, "wrong user name or password")
		return
	}
	ev := audit.Event{TsMs: a.Now().UnixMilli(), Kind: audit.KindLogin, User: req.Username, ClientID: ip}
	fail := func(err error) {
		ev.Outcome, ev.Reason = "refused", string(protocol.ReasonOf(err))
		_ = a.Audit.Append(ev)
		Fail(w, a.Log, err)
	}
	u, err := a.checkPassword(req.Username, req.Password, &ev)
	if err != nil {
		fail(err)
		return
	}
	if u.Disabled {
		fail(protocol.Refuse(protocol.ReasonForbidden, "this account is disabled; ask the administrator"))
		return
	}
	if a.Guard != nil {
		if err := a.Guard.BeforeLogin(req.Username); err != nil {
			fail(err)
			return
		}
		if err := a.Guard.AfterPassword(req.Username, ip, req.TOTP); err != nil {
			fail(err)
			return
		}
	}
	tok, exp, err := a.issueAppToken(u)
	if err != nil {
		fail(err)
		return
	}
	pub, _ := sign.EncodePublic(a.GatewayKey.Public())
	ev.Outcome = "ok"
	if err := a.Audit.Append(ev); err != nil {
		Fail(w, a.Log, err)
		return
	}
	a.loginLimits().refund(ip)
	writeJSON(w, http.StatusOK, LoginResponse{User: req.Username, Token: tok, ExpiresAtMs: exp.UnixMilli(),
		ClientIDPrefix: req.Username + "-", BrokerURL: a.BrokerURL, GatewayKey: pub})
}

// checkPassword checks name's password under the lockout and returns the user. The attempt
// is counted before the hash is computed, and a name no user has costs the same hash and
// gets the same answers, so neither answers nor timing tell which names exist. ev's Detail
// says whether the password was checked.
func (a *API) checkPassword(name, password string, ev *audit.Event) (store.User, error) {
	lockedOut := func(until time.Time) error {
		return protocol.Refuse(protocol.ReasonLockedOut, "too many failed logins for %q; try again after %s, or ask the administrator to unlock it",
			name, until.UTC().Format(time.RFC3339))
	}
	att, until, err := a.lockout().Reserve(name)
	if err != nil {
		ev.Detail = "password=unchecked"
		if errors.Is(err, accounts.ErrInFlight) {
			return store.User{}, protocol.Refuse(protocol.ReasonRateLimited, "too many logins for %q at once; try again shortly", name)
		}
		return store.User{}, lockedOut(until)
	}
	u, err := a.Store.GetUser(name)
	if err == nil {
		err = a.hashes().Verify(password, u.PasswordHash)
	} else if errors.Is(err, store.ErrNotFound) {
		if err = a.hashes().Verify(password, a.dummyHash()); !errors.Is(err, accounts.ErrBusy) {
			err = accounts.ErrMismatch
		}
	}
	switch {
	case err == nil:
		att.Succeeded()
		ev.Detail = "password=right"
		return u, nil
	case errors.Is(err, accounts.ErrMismatch):
		ev.Detail = "password=wrong"
		if until, locked := att.Failed(); locked {
			ev.Detail += " lockout"
			return store.User{}, lockedOut(until)
		}
		return store.User{}, protocol.Refuse(protocol.ReasonUnauthenticated, "wrong user name or password")
	case errors.Is(err, accounts.ErrBusy):
		// Not a password failure: a flood must not lock real users out.
		att.Cancel()
		ev.Detail = "password=unchecked"
		return store.User{}, protocol.Refuse(protocol.ReasonRateLimited, "too many logins at once; try again shortly")
	default:
		att.Cancel()
		return store.User{}, err
	}
}

// lockout is the password lockout of the API.
func (a *API) lockout() *accounts.Lockout {
	a.loginOnce.Do(a.initLogin)
	return a.Lockout
}

// loginLimits is the per-address limit of failed logins.
func (a *API) loginLimits() *addrLimiter {
	a.loginOnce.Do(a.initLogin)
	return a.perAddr
}

func (a *API) initLogin() {
	if a.Lockout == nil {
		a.Lockout = accounts.NewLockout(5, 5*time.Minute, 15*time.Minute, a.Clock)
	}
	a.perAddr = newAddrLimiter(a.LoginRatePerMinute, a.LoginBurst, a.Clock)
	// Made now, so the first login with an unknown name costs one hash like any other.
	a.dummyHash()
}

// issueAppToken signs an app token for u.
func (a *API) issueAppToken(u store.User) (string, time.Time, error) {
	tok, _, exp, err := a.Issuer.IssueGen(u.Name, protocol.RoleApp, a.AppTokenTTL, u.TokenGen)
	return tok, exp, err
}

// hashes is the gate every password hash of the API goes through.
func (a *API) hashes() *accounts.Gate {
	a.gateOnce.Do(func() {
		if a.Hashes == nil {
			a.Hashes = accounts.NewGate(0, 0)
		}
	})
	return a.Hashes
}

// reissue issues a car new credentials and retires its old token: for a car whose token may
// have leaked (a dumped head unit, a car sold without a factory reset). The new token is
// recorded before it is returned, so an answered reissue survives a crash.
func (a *API) reissue(w http.ResponseWriter, r *http.Request) {
	vin := r.PathValue("vin")
	if !protocol.ValidVIN(vin) {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%q is not a VIN", vin))
		return
	}
	v, err := a.Store.GetVehicle(vin)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			Error(w, http.StatusNotFound, protocol.ReasonVehicleUnknown, "no such vehicle")
			return
		}
		Fail(w, a.Log, err)
		return
	}
	if v.DecommissionedMs != 0 {
		// New credentials would undo the retirement of the old ones.
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, vin+" is decommissioned: it gets no new credentials")
		return
	}
	tok, jti, _, err := a.Issuer.IssueID(vin, protocol.RoleVehicle, a.VehicleTokenTTL)
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	if err := a.Store.SetVehicleTokenID(vin, jti); err != nil {
		Fail(w, a.Log, err)
		return
	}
	_ = a.Audit.Append(audit.Event{TsMs: a.Now().UnixMilli(), Kind: audit.KindAdmin, VIN: vin, Outcome: "credentials_reissued"})
	if a.TokenRetired != nil {
		a.TokenRetired(vin, jti)
	}
	pub, _ := sign.EncodePublic(a.CarKey(vin).Public())
	writeJSON(w, http.StatusOK, protocol.Credentials{VIN: vin, ClientID: vin, Username: vin, Token: tok, GatewayKey: pub})
}

func (a *API) dummyHash() string {
	a.dummyOnce.Do(func() { a.dummy, _ = accounts.Hash("no such user", a.PasswordParams) })
	return a.dummy
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// admin wraps an admin handler: loopback only unless allowed, and the admin token.
func (a *API) admin(h http.HandlerFunc) http.Handler {
	want := []byte("Bearer " + a.AdminToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.AllowRemote {
			if ip := net.ParseIP(clientIP(r)); ip == nil || !ip.IsLoopback() {
				Error(w, http.StatusForbidden, protocol.ReasonForbidden, "the admin API answers loopback only (set admin_allow_remote to change that)")
				return
			}
		}
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			Error(w, http.StatusUnauthorized, protocol.ReasonUnauthenticated, "missing or wrong admin token (see DATA/admin.token)")
			return
		}
		h(w, r)
	})
}

// AddVehiclesRequest is the body of POST /v1/admin/vehicles: explicit VINs, or a count of
// cars to make up VINs for, or both.
type AddVehiclesRequest struct {
	VINs  []string `json:"vins,omitempty"`
	Count int      `json:"count,omitempty"`
}

// MaxVehiclesPerRequest bounds one provisioning call.
const MaxVehiclesPerRequest = 100_000

func (a *API) addVehicles(w http.ResponseWriter, r *http.Request) {
	var req AddVehiclesRequest
	if err := DecodeBody(r, &req); err != nil {
		Fail(w, a.Log, err)
		return
	}
	if req.Count < 0 || req.Count+len(req.VINs) == 0 || req.Count+len(req.VINs) > MaxVehiclesPerRequest {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("give 1 to %d vins or a count", MaxVehiclesPerRequest))
		return
	}
	seen := map[string]bool{}
	for _, v := range req.VINs {
		if !protocol.ValidVIN(v) {
			Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%q is not a VIN (17 characters, digits and capitals without I, O, Q)", v))
			return
		}
		if seen[v] {
			Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%s given twice", v))
			return
		}
		seen[v] = true
	}
	vins := append([]string(nil), req.VINs...)
	for i := 0; i < req.Count; i++ {
		vins = append(vins, RandomVIN())
	}
	nowMs := a.Now().UnixMilli()
	vs := make([]store.Vehicle, len(vins))
	out := make([]protocol.Credentials, len(vins))
	for i, v := range vins {
		tok, jti, _, err := a.Issuer.IssueID(v, protocol.RoleVehicle, a.VehicleTokenTTL)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		pub, _ := sign.EncodePublic(a.CarKey(v).Public())
		vs[i] = store.Vehicle{VIN: v, CreatedMs: nowMs, TokenID: jti}
		out[i] = protocol.Credentials{VIN: v, ClientID: v, Username: v, Token: tok, GatewayKey: pub}
	}
	if err := a.Store.AddVehicles(vs); err != nil {
		if errors.Is(err, store.ErrExists) {
			Error(w, http.StatusConflict, protocol.ReasonDuplicate, err.Error())
			return
		}
		Fail(w, a.Log, err)
		return
	}
	_ = a.Audit.Append(audit.Event{TsMs: nowMs, Kind: audit.KindAdmin, Outcome: "vehicles_added",
		Detail: fmt.Sprintf("%d vehicles", len(vins))})
	writeJSON(w, http.StatusCreated, out)
}

// VehicleView is what the admin API shows of a car.
type VehicleView struct {
	store.Vehicle
	Twin *store.Twin `json:"twin,omitempty"`
	// Keys is the car's whitelist: version, the version the car acknowledged, and the keys,
	// so an owner or operator sees whether a revocation has reached the car.
	Keys *keys.Status `json:"keys,omitempty"`
}

func (a *API) view(v store.Vehicle) VehicleView {
	out := VehicleView{Vehicle: v}
	if a.KeyStatus != nil {
		st := a.KeyStatus(v.VIN)
		out.Keys = &st
	}
	if t, ok := a.Twins.Twin(v.VIN); ok {
		out.Twin = &t
	}
	return out
}

func (a *API) listVehicles(w http.ResponseWriter, _ *http.Request) {
	vs, err := a.Store.ListVehicles()
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	out := make([]VehicleView, len(vs))
	for i, v := range vs {
		out[i] = a.view(v)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) showVehicle(w http.ResponseWriter, r *http.Request) {
	vin := r.PathValue("vin")
	if !protocol.ValidVIN(vin) {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%q is not a VIN", vin))
		return
	}
	v, err := a.Store.GetVehicle(vin)
	if errors.Is(err, store.ErrNotFound) {
		Error(w, http.StatusNotFound, protocol.ReasonVehicleUnknown, "no vehicle "+vin)
		return
	}
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, a.view(v))
}

// AssignRequest is the body of POST /v1/admin/vehicles/{vin}/assign. Role "none" removes the
// user from the car.
type AssignRequest struct {
	User string        `json:"user"`
	Role protocol.Role `json:"role"`
}

func (a *API) assign(w http.ResponseWriter, r *http.Request) {
	vin := r.PathValue("vin")
	var req AssignRequest
	if err := DecodeBody(r, &req); err != nil {
		Fail(w, a.Log, err)
		return
	}
	// Through the key registry: the user's keys get the new role (or are revoked for "none")
	// in the same transaction, and the car a new whitelist version; audited there.
	out, err := a.Keys.Assign(r.Context(), vin, req.User, req.Role)
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// AddUserRequest is the body of POST /v1/admin/users.
type AddUserRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// MinPasswordLen is the shortest password accepted (OWASP ASVS 2.1.1).
const MinPasswordLen = 12

func (a *API) addUser(w http.ResponseWriter, r *http.Request) {
	var req AddUserRequest
	if err := DecodeBody(r, &req); err != nil {
		Fail(w, a.Log, err)
		return
	}
	if !protocol.ValidUser(req.Username) {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "user names are 1-64 of a-z 0-9 _ . and not gateway, admin or broker")
		return
	}
	if len(req.Password) < MinPasswordLen || len(req.Password) > accounts.MaxPasswordBytes {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("passwords are %d to %d bytes", MinPasswordLen, accounts.MaxPasswordBytes))
		return
	}
	h, err := a.hashes().Hash(req.Password, a.PasswordParams)
	if errors.Is(err, accounts.ErrBusy) {
		Error(w, http.StatusTooManyRequests, protocol.ReasonRateLimited, "too many password hashes at once; try again shortly")
		return
	}
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	nowMs := a.Now().UnixMilli()
	if err := a.Store.AddUser(store.User{Name: req.Username, PasswordHash: h, CreatedMs: nowMs, TokenGen: store.NextTokenGen(0, nowMs)}); err != nil {
		if errors.Is(err, store.ErrExists) {
			Error(w, http.StatusConflict, protocol.ReasonDuplicate, err.Error())
			return
		}
		Fail(w, a.Log, err)
		return
	}
	_ = a.Audit.Append(audit.Event{TsMs: a.Now().UnixMilli(), Kind: audit.KindAdmin, User: req.Username, Outcome: "user_added"})
	writeJSON(w, http.StatusCreated, map[string]string{"username": req.Username})
}

func (a *API) queryAudit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := audit.Filter{VIN: q.Get("vin"), User: q.Get("user"), Kind: q.Get("kind")}
	if f.Kind != "" && !slices.Contains(audit.Kinds, f.Kind) {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest,
			fmt.Sprintf("kind %q: want one of %s", f.Kind, strings.Join(audit.Kinds, ", ")))
		return
	}
	if n := q.Get("limit"); n != "" {
		v, err := strconv.Atoi(n)
		if err != nil || v < 0 {
			Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("limit %q: want a number, 0 or more", n))
			return
		}
		f.Limit = v
	}
	for key, dst := range map[string]*int64{"since": &f.SinceMs, "until": &f.UntilMs} {
		if n := q.Get(key); n != "" {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil || v < 0 {
				Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%s %q: want Unix milliseconds", key, n))
				return
			}
			*dst = v
		}
	}
	evs, err := a.Audit.Query(f)
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, evs)
}

// Serve runs an http.Server on ln until ctx ends, then shuts it down gracefully.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-errc
		return nil
	}
}
