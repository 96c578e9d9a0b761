package httpapi

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
)

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

func (a *API) login(w http.ResponseWriter, r *http.Request) {
	var req api.LoginRequest
	if err := DecodeBody(r, &req); err != nil {
		Fail(w, a.Log, err)
		return
	}
	ip := clientIP(r)
	// Every attempt takes a token from its address's bucket, before anything is checked or
	// written; a successful login gives it back.
	if !a.loginLimits().Take(ip) {
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
	keys := []string{pub}
	for _, k := range a.SigningKeys {
		if enc, err := sign.EncodePublic(k); err == nil && enc != pub {
			keys = append(keys, enc)
		}
	}
	ev.Outcome = "ok"
	if err := a.Audit.Append(ev); err != nil {
		Fail(w, a.Log, err)
		return
	}
	a.loginLimits().Refund(ip)
	writeJSON(w, http.StatusOK, api.LoginResponse{User: req.Username, Token: tok, ExpiresAtMs: exp.UnixMilli(),
		ClientIDPrefix: req.Username + "-", BrokerURL: a.BrokerURL, GatewayKey: pub, GatewayKeys: keys})
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
func (a *API) loginLimits() *AddrLimiter {
	a.loginOnce.Do(a.initLogin)
	return a.perAddr
}

func (a *API) initLogin() {
	if a.Lockout == nil {
		a.Lockout = accounts.NewLockout(5, 5*time.Minute, 15*time.Minute, a.Clock)
	}
	a.perAddr = NewAddrLimiter(a.LoginRatePerMinute, a.LoginBurst, a.Clock)
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

func (a *API) dummyHash() string {
	a.dummyOnce.Do(func() { a.dummy, _ = accounts.Hash("no such user", a.PasswordParams) })
	return a.dummy
}
