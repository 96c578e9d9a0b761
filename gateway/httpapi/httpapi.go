// Package httpapi is the gateway's HTTP surface: health and readiness, app login, the app's
// 2FA, keys, password and session, and the admin API that provisions vehicles and users. It
// serves the contract of package api: every body it sends is one of api's types. Errors are
// JSON {"error": reason, "message": text} with the reason from the protocol's closed list.
package httpapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/subtle"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/keys"
	"telematics/gateway/operators"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/clock"
	"telematics/pkg/devicecert"
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
	// SigningKeys are every key the gateway signs with (the current one first, then the
	// previous during a rotation), told to phones at login (nil: GatewayKey alone).
	SigningKeys []*ecdsa.PublicKey
	// CAPEM is the PEM CA certificate of the gateway's TLS listeners, handed to every car in
	// its credentials (ca_pem); "" when there is none to hand.
	CAPEM string
	// Verifier verifies app tokens: the endpoints of the app (2FA, keys, password, session)
	// are served only with it.
	Verifier *token.Verifier
	Twins    Twins
	Guard    LoginGuard
	// TwoFA serves the app's 2FA endpoints and, with the store, the user administration (nil:
	// neither is served).
	TwoFA *twofa.Service
	// Keys changes who is on a car (assign, unassign, transfer, decommission, key revocation)
	// and serves the app's key endpoints: every role change goes through it, with the user's
	// keys and a new whitelist version. Its Status is the whitelist the admin API shows.
	Keys        *keys.Service
	AdminToken  string
	AllowRemote bool
	// Clock tells the time for tokens, audit records and login limits (nil: the real clock).
	Clock clock.Clock
	Log   *slog.Logger
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
	// Metrics serves GET /metrics in Prometheus' format, behind the admin token (nil: not
	// served).
	Metrics http.Handler
	// Hooks are what the API asks of, and tells, the rest of the gateway.
	Hooks Hooks
	// DeviceCA issues the cars' device certificates when provisioning or a reissue asks for
	// one (nil: such a request is refused).
	DeviceCA *devicecert.CA
	// Operators are the console's operator accounts, administered with the admin token (nil:
	// not served; needs TwoFA too).
	Operators *operators.Store

	dummyOnce sync.Once
	gateOnce  sync.Once
	dummy     string
	loginOnce sync.Once
	perAddr   *AddrLimiter
}

// Hooks are the API's calls into the rest of the gateway. CarKey is required; a nil hook
// otherwise means what its field says.
type Hooks struct {
	// CarKey is the gateway key a car's credentials name: the one its whitelists and grants
	// are signed with (during a rotation, the previous key until the car made the hop).
	CarKey func(vin string) *sign.Signer
	// Ready reports whether the gateway can serve commands (store open, bus connected); nil:
	// always ready.
	Ready func() error
	// Stats reports counters for GET /v1/admin/stats (nil: not served).
	Stats func() api.Stats
	// TokenRetired is told a car's new token id once its credentials were reissued, so the
	// broker refuses the old token and closes its sessions (nil: nobody is told).
	TokenRetired func(vin, currentJTI string)
	// TokensEnded is told a user whose app tokens were ended (password changed, account
	// disabled or deleted), so the broker closes their sessions (nil: nobody is told).
	TokensEnded func(user string)
}

// maxBody bounds every request body.
const maxBody = 64 * 1024

// Handler returns the routed handler.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, api.Health{Status: "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.Hooks.Ready != nil {
			if err := a.Hooks.Ready(); err != nil {
				writeJSON(w, http.StatusServiceUnavailable, api.Health{Status: "not ready", Message: err.Error()})
				return
			}
		}
		writeJSON(w, http.StatusOK, api.Health{Status: "ready"})
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
	a.debugRoutes(mux)
	if a.Hooks.Stats != nil {
		mux.Handle("GET /v1/admin/stats", a.admin(func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, a.Hooks.Stats())
		}))
	}
	if a.Verifier != nil && a.TwoFA != nil {
		a.twoFactorRoutes(mux, a.TwoFA, a.Verifier)
		a.userRoutes(mux, a.TwoFA, a.Verifier)
	}
	if a.Operators != nil && a.TwoFA != nil {
		a.operatorRoutes(mux, a.Operators, a.TwoFA)
	}
	if a.Verifier != nil && a.Keys != nil {
		a.keyRoutes(mux, a.Keys, a.Verifier)
	}
	return jsonRouteErrors(mux)
}

// jsonRouteErrors answers what the mux itself refuses (a path no endpoint has, a method the
// endpoint does not take; its answers are plain text) in the API's error form, bad_request
// with the mux's status (404, 405) and its Allow header.
func jsonRouteErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h, pattern := mux.Handler(r); pattern == "" {
			h.ServeHTTP(&routeRefusal{w: w, r: r}, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// routeRefusal writes the mux's refusal as a JSON error and drops the mux's text.
type routeRefusal struct {
	w     http.ResponseWriter
	r     *http.Request
	wrote bool
}

func (rr *routeRefusal) Header() http.Header { return rr.w.Header() }

func (rr *routeRefusal) WriteHeader(status int) {
	if rr.wrote {
		return
	}
	rr.wrote = true
	msg := "no endpoint " + rr.r.URL.Path + " (see docs/PROTOCOL.md)"
	if status == http.StatusMethodNotAllowed {
		msg = rr.r.URL.Path + " does not take " + rr.r.Method + "; it takes " + rr.w.Header().Get("Allow")
	}
	rr.w.Header().Del("X-Content-Type-Options")
	Error(rr.w, status, protocol.ReasonBadRequest, msg)
}

func (rr *routeRefusal) Write(b []byte) (int, error) {
	rr.WriteHeader(http.StatusNotFound)
	return len(b), nil
}

func (a *API) gatewayKey(w http.ResponseWriter, _ *http.Request) {
	pub, err := sign.EncodePublic(a.GatewayKey.Public())
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, api.GatewayKey{KID: a.GatewayKey.KID(), PublicKey: pub})
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

// Serve runs an http.Server on ln until ctx ends, then shuts it down gracefully. What the
// server itself reports (a failed TLS handshake, a panic in a handler) goes to logger, not to
// the standard logger (ErrorLog).
func Serve(ctx context.Context, ln net.Listener, h http.Handler, logger *slog.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
		ErrorLog: ErrorLog(logger)}
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
