// Package console is the operator console the gateway serves at /: named operators
// (package operators) log in with a password and a TOTP code (package twofa), and see the
// fleet, each car and their changes live (Server-Sent Events). It serves the single-page
// front end embedded from dist/ (built from web/ by .ci/console-build) and its JSON API under
// /console/api/.
package console

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/httpapi"
	"telematics/gateway/keys"
	"telematics/gateway/operators"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/pkg/clock"
	"telematics/pkg/protocol"
)

// Config tunes the console.
type Config struct {
	// IdleTimeout ends a session not used for this long.
	IdleTimeout time.Duration
	// AbsoluteTimeout ends a session this long after login, used or not.
	AbsoluteTimeout time.Duration
	// WatchInterval is how often the fleet is looked at for changes to stream.
	WatchInterval time.Duration
	// KeepAlive is how often an idle event stream gets a comment (and its session is looked at
	// again).
	KeepAlive time.Duration
	// AlertRevocationAfter: a car that has not acknowledged its whitelist (a revocation) for
	// this long is an alert.
	AlertRevocationAfter time.Duration
	// AlertTelemetryAfter: an online car without telemetry for this long is an alert.
	AlertTelemetryAfter time.Duration
	// AlertFailureBurst: this many 2FA failures (all users) within a minute are an alert.
	AlertFailureBurst int
}

// DefaultConfig is 30 minutes idle, 12 hours at most, the fleet looked at 4 times a second;
// alerts for a whitelist unacknowledged for 5 minutes, telemetry silent for a minute, and 10
// 2FA failures within a minute.
func DefaultConfig() Config {
	return Config{IdleTimeout: 30 * time.Minute, AbsoluteTimeout: 12 * time.Hour,
		WatchInterval: 250 * time.Millisecond, KeepAlive: 15 * time.Second,
		AlertRevocationAfter: 5 * time.Minute, AlertTelemetryAfter: time.Minute, AlertFailureBurst: 10}
}

// Twins reads the live vehicle twin (commands.Router).
type Twins interface {
	Twin(vin string) (store.Twin, bool)
}

// Whitelists reads each car's whitelist state (keys.Service).
type Whitelists interface {
	Status(vin string) keys.Status
	Whitelist(vin string) *protocol.Whitelist
}

// Credentials reissues a car's credentials (httpapi.API.Reissue); actor goes to the audit.
type Credentials interface {
	Reissue(vin string, cert bool, actor string) (protocol.Credentials, error)
}

// Members removes a user from a car (keys.Service): role, share and keys in one whitelist.
type Members interface {
	Unassign(ctx context.Context, vin, user string) (keys.RoleChange, error)
}

// Deps are what the console reads and writes.
type Deps struct {
	Store      *store.Store
	Operators  *operators.Store
	TwoFA      *twofa.Service
	Audit      *audit.Log
	Twins      Twins
	Whitelists Whitelists
	// Credentials and Members serve the admin actions on cars; nil: those actions answer 501.
	Credentials Credentials
	Members     Members
	// Ready reports whether the gateway can serve (httpapi's readiness); nil: always. A
	// refusal is an alert.
	Ready func() error
	// Hashes bounds the password hashes computed at once (the API's gate).
	Hashes         *accounts.Gate
	PasswordParams accounts.Params
	// UserLockout is the app users' password lockout (httpapi.API.Lockout), cleared with
	// their 2FA lockout by an admin's unlock; nil: only the 2FA lockout is cleared.
	UserLockout *accounts.Lockout
	// OperatorLockout counts operators' wrong passwords (nil: 5 in 5 minutes lock for 15).
	OperatorLockout *accounts.Lockout
	// LoginLimit is the per-address limit of failed console logins (httpapi.NewAddrLimiter;
	// nil: none), so one address cannot try passwords across operator names.
	LoginLimit *httpapi.AddrLimiter
	Clock      clock.Clock
	Log        *slog.Logger
}

// Console serves the console. Close stops its fleet watcher.
type Console struct {
	cfg     Config
	d       Deps
	clock   clock.Clock
	log     *slog.Logger
	watch   *watcher
	handler http.Handler

	dummyOnce sync.Once
	dummy     string
	closeOnce sync.Once
}

// New starts the console's fleet watcher; Close stops it.
func New(cfg Config, d Deps) (*Console, error) {
	def := DefaultConfig()
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = def.IdleTimeout
	}
	if cfg.AbsoluteTimeout <= 0 {
		cfg.AbsoluteTimeout = def.AbsoluteTimeout
	}
	if cfg.WatchInterval <= 0 {
		cfg.WatchInterval = def.WatchInterval
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = def.KeepAlive
	}
	if cfg.AlertRevocationAfter <= 0 {
		cfg.AlertRevocationAfter = def.AlertRevocationAfter
	}
	if cfg.AlertTelemetryAfter <= 0 {
		cfg.AlertTelemetryAfter = def.AlertTelemetryAfter
	}
	if cfg.AlertFailureBurst <= 0 {
		cfg.AlertFailureBurst = def.AlertFailureBurst
	}
	c := &Console{cfg: cfg, d: d, clock: clock.Or(d.Clock), log: d.Log}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.d.Hashes == nil {
		c.d.Hashes = accounts.NewGate(0, 0)
	}
	if c.d.OperatorLockout == nil {
		c.d.OperatorLockout = accounts.NewLockout(5, 5*time.Minute, 15*time.Minute, c.clock)
	}
	c.dummyHash() // now, so the first login with an unknown name costs one hash like any other
	w, err := newWatcher(c, cfg.WatchInterval)
	if err != nil {
		return nil, err
	}
	c.watch = w
	c.handler = c.routes()
	return c, nil
}

// Close stops the fleet watcher and ends the event streams; it is idempotent.
func (c *Console) Close() error {
	c.closeOnce.Do(c.watch.stop)
	return nil
}

// Handler serves / (the page), /console/ (its assets) and /console/api/.
func (c *Console) Handler() http.Handler { return c.handler }

// Owns reports whether path is the console's: the caller routes everything else elsewhere.
func Owns(path string) bool {
	return path == "/" || strings.HasPrefix(path, "/console/")
}

func (c *Console) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /console/api/login", c.login)
	mux.Handle("POST /console/api/enroll", c.authed(stageEnroll, "", c.confirmEnrollment))
	mux.Handle("POST /console/api/logout", c.authed(stageAny, "", c.logout))
	mux.Handle("GET /console/api/session", c.authed(stageFull, "", c.session))
	mux.Handle("GET /console/api/fleet", c.authed(stageFull, "", c.fleet))
	mux.Handle("GET /console/api/cars/{vin}", c.authed(stageFull, "", c.car))
	mux.Handle("GET /console/api/events", c.authed(stageFull, "", c.events))
	mux.Handle("GET /console/api/cars/{vin}/commands", c.authed(stageFull, "", c.commands))
	mux.Handle("GET /console/api/operators", c.authed(stageFull, operators.RoleAdmin, c.listOperators))
	mux.Handle("POST /console/api/users/{user}/unlock", c.authed(stageFull, operators.RoleAdmin, c.unlockUser))
	mux.Handle("POST /console/api/users/{user}/reset-2fa", c.authed(stageFull, operators.RoleAdmin, c.resetUser2FA))
	mux.Handle("POST /console/api/cars/{vin}/credentials", c.authed(stageFull, operators.RoleAdmin, c.reissueCredentials))
	mux.Handle("DELETE /console/api/cars/{vin}/users/{user}", c.authed(stageFull, operators.RoleAdmin, c.removeUserFromCar))
	mux.Handle("GET /console/api/users", c.authed(stageFull, "", c.users))
	mux.Handle("/console/api/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.Error(w, http.StatusNotFound, protocol.ReasonBadRequest, "no console endpoint "+r.Method+" "+r.URL.Path)
	}))
	assets := assetHandler()
	mux.Handle("GET /{$}", assets)
	mux.Handle("/console/", assets) // GET and HEAD only: see assetHandler
	return securityHeaders(mux)
}

// securityHeaders keeps the page from being framed, sniffed or given scripts from elsewhere.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; "+
			"script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		if strings.HasPrefix(r.URL.Path, "/console/api/") {
			hd.Set("Cache-Control", "no-store")
		}
		h.ServeHTTP(w, r)
	})
}

// now is the console's time.
func (c *Console) now() time.Time { return c.clock.Now() }

// ctx bounds a store call made for a request.
func reqCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 10*time.Second)
}

// clientIP is the request's peer address without the port, for audit records.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// audit appends ev to the audit log; a record that could not be written is logged (the action
// it records has happened, or the refusal is sent, either way).
func (c *Console) audit(ev audit.Event) {
	if err := c.d.Audit.Append(ev); err != nil {
		c.log.Error("console: audit record not written", "kind", ev.Kind, "action", ev.Action, "user", ev.User, "err", err)
	}
}
