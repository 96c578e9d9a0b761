package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"sort"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/token"
)

// CheckAppToken refuses an app token of user with generation gen unless the user exists, is
// not disabled, and gen is the user's current token generation: a deleted or disabled user,
// and every token issued before a password change, are refused wherever app tokens are
// verified (this API, and the embedded broker through the gateway).
func CheckAppToken(st *store.Store, user string, gen uint64) error {
	u, err := st.GetUser(user)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return protocol.Refuse(protocol.ReasonUnauthenticated, "this account no longer exists")
	case err != nil:
		return err
	case u.Disabled:
		return protocol.Refuse(protocol.ReasonUnauthenticated, "this account is disabled; ask the administrator")
	case gen != u.TokenGen:
		return protocol.Refuse(protocol.ReasonUnauthenticated, "token ended by a password change or an administrator; log in again")
	}
	return nil
}

// CheckAppToken is CheckAppToken on the API's store.
func (a *API) CheckAppToken(user string, gen uint64) error { return CheckAppToken(a.Store, user, gen) }

// userRoutes registers the user administration and the app's password change.
//
//	GET    /v1/admin/users                  every user: 2FA, lockouts, disabled, vehicles
//	POST   /v1/admin/users/{user}/unlock    clear the password and 2FA lockouts (not the enrollment)
//	POST   /v1/admin/users/{user}/disable   refuse the user's logins and end their tokens
//	POST   /v1/admin/users/{user}/enable    let a disabled user log in again
//	POST   /v1/admin/users/{user}/password  {"password"}: set a new password, end their tokens
//	DELETE /v1/admin/users/{user}           remove a user who has no role on any car
//	POST   /v1/password                     (app) {"old_password", "password"} → a new token
//	GET    /v1/session                      (app) the user, the token's expiry, the broker now
//
// Every change is audited. Ending a user's tokens moves their token generation on (every app
// token issued before is refused), ends their step-up sessions, and calls a.Hooks.TokensEnded.
func (a *API) userRoutes(mux *http.ServeMux, svc *twofa.Service, verifier *token.Verifier) {
	a.sessionRoutes(mux, verifier)
	mux.Handle("GET /v1/admin/users", a.admin(func(w http.ResponseWriter, r *http.Request) {
		a.listUsers(w, svc)
	}))
	user := func(h func(w http.ResponseWriter, r *http.Request, name string)) http.Handler {
		return a.admin(func(w http.ResponseWriter, r *http.Request) {
			name := r.PathValue("user")
			if !protocol.ValidUser(name) {
				Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "not a user name")
				return
			}
			if _, err := a.Store.GetUser(name); errors.Is(err, store.ErrNotFound) {
				Error(w, http.StatusNotFound, protocol.ReasonBadRequest, "no user "+name+" (see gateway admin user list)")
				return
			} else if err != nil {
				Fail(w, a.Log, err)
				return
			}
			h(w, r, name)
		})
	}
	adminEvent := func(r *http.Request, name, outcome, detail string) audit.Event {
		return audit.Event{TsMs: a.Now().UnixMilli(), Kind: audit.KindAdmin, User: name, ClientID: "admin@" + clientIP(r),
			Outcome: outcome, Detail: detail}
	}
	mux.Handle("POST /v1/admin/users/{user}/unlock", user(func(w http.ResponseWriter, r *http.Request, name string) {
		password := a.lockout().Clear(name)
		if err := svc.ClearLockout(name, "admin@"+clientIP(r)); err != nil {
			Fail(w, a.Log, err)
			return
		}
		_ = a.Audit.Append(adminEvent(r, name, "lockout_cleared", fmt.Sprintf("password_lockout=%t totp_lockout=cleared enrollment=kept", password)))
		writeJSON(w, http.StatusOK, api.UserChange{User: name, LockoutCleared: true})
	}))
	mux.Handle("POST /v1/admin/users/{user}/disable", user(func(w http.ResponseWriter, r *http.Request, name string) {
		a.setDisabled(w, r, svc, name, true, adminEvent(r, name, "user_disabled", "tokens ended"))
	}))
	mux.Handle("POST /v1/admin/users/{user}/enable", user(func(w http.ResponseWriter, r *http.Request, name string) {
		a.setDisabled(w, r, svc, name, false, adminEvent(r, name, "user_enabled", ""))
	}))
	mux.Handle("POST /v1/admin/users/{user}/password", user(func(w http.ResponseWriter, r *http.Request, name string) {
		var req api.PasswordRequest
		if err := DecodeBody(r, &req); err != nil {
			Fail(w, a.Log, err)
			return
		}
		if err := a.setPassword(name, req.Password, svc); err != nil {
			Fail(w, a.Log, err)
			return
		}
		a.lockout().Clear(name)
		_ = a.Audit.Append(adminEvent(r, name, "password_reset", "tokens ended"))
		writeJSON(w, http.StatusOK, api.UserChange{User: name, PasswordReset: true})
	}))
	mux.Handle("DELETE /v1/admin/users/{user}", user(func(w http.ResponseWriter, r *http.Request, name string) {
		ev := adminEvent(r, name, "user_deleted", "2fa enrollment removed, tokens ended")
		if r.URL.Query().Get("from_cars") == "true" {
			if a.Keys == nil {
				Error(w, http.StatusNotImplemented, protocol.ReasonInternal, "this gateway cannot remove users from cars")
				return
			}
			// Each car gets its own whitelist version without the user's keys, audited as an
			// unassignment, before the account goes.
			if _, err := a.Keys.UnassignEverywhere(r.Context(), name); err != nil {
				Fail(w, a.Log, err)
				return
			}
		}
		err := a.Store.DeleteUser(name,
			func(tx kv.Tx) error { return svc.RemoveUserTx(tx, name) },
			func(tx kv.Tx) error { return a.Audit.AppendTx(tx, ev) })
		if errors.Is(err, store.ErrHasVehicles) {
			Error(w, http.StatusConflict, protocol.ReasonForbidden,
				fmt.Sprintf("%v; remove the user from these cars first (gateway admin vehicle unassign VIN USER), or delete with --from-cars", err))
			return
		}
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		a.lockout().Clear(name)
		a.tokensEnded(svc, name)
		writeJSON(w, http.StatusOK, api.UserChange{User: name, Deleted: true})
	}))
	mux.HandleFunc("POST /v1/password", func(w http.ResponseWriter, r *http.Request) {
		c, err := a.BearerClaims(r, verifier)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		var req api.PasswordRequest
		if err := DecodeBody(r, &req); err != nil {
			Fail(w, a.Log, err)
			return
		}
		ev := audit.Event{TsMs: a.Now().UnixMilli(), Kind: audit.KindLogin, User: c.Subject, ClientID: clientIP(r), Outcome: "password_changed"}
		// The old password is checked like a login's, under the same lockout: a stolen token
		// does not let anyone guess the password, or change it without knowing it.
		if _, err := a.checkPassword(c.Subject, req.OldPassword, &ev); err != nil {
			ev.Outcome, ev.Reason = "password_change_refused", string(protocol.ReasonOf(err))
			_ = a.Audit.Append(ev)
			Fail(w, a.Log, err)
			return
		}
		if err := a.setPassword(c.Subject, req.Password, svc); err != nil {
			Fail(w, a.Log, err)
			return
		}
		ev.Detail = "tokens ended"
		_ = a.Audit.Append(ev)
		u, err := a.Store.GetUser(c.Subject)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		tok, exp, err := a.issueAppToken(u)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, api.PasswordChanged{User: u.Name, Token: tok, ExpiresAtMs: exp.UnixMilli()})
	})
}

func (a *API) listUsers(w http.ResponseWriter, svc *twofa.Service) {
	us, err := a.Store.ListUsers()
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	vs, err := a.Store.ListVehicles()
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	roles := map[string]map[string]protocol.Role{}
	for _, v := range vs {
		for u, role := range v.Users {
			if roles[u] == nil {
				roles[u] = map[string]protocol.Role{}
			}
			roles[u][v.VIN] = role
		}
	}
	out := make([]api.UserView, 0, len(us))
	for _, u := range us {
		view := api.UserView{Name: u.Name, CreatedMs: u.CreatedMs, Disabled: u.Disabled, Vehicles: roles[u.Name]}
		if t := a.lockout().LockedUntil(u.Name); !t.IsZero() {
			view.PasswordLockedUntilMs = t.UnixMilli()
		}
		st, err := svc.Status(u.Name)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		view.TOTPEnrolled = st.Enrolled
		if !st.LockedUntil.IsZero() {
			view.TOTPLockedUntilMs = st.LockedUntil.UnixMilli()
		}
		out = append(out, view)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
}

// setDisabled disables (ending the user's tokens) or enables name.
func (a *API) setDisabled(w http.ResponseWriter, _ *http.Request, svc *twofa.Service, name string, disabled bool, ev audit.Event) {
	nowMs := a.Now().UnixMilli()
	_, err := a.Store.UpdateUser(name, func(u *store.User) error {
		if disabled && !u.Disabled {
			u.TokenGen = store.NextTokenGen(u.TokenGen, nowMs)
		}
		u.Disabled = disabled
		return nil
	})
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	if disabled {
		a.tokensEnded(svc, name)
	}
	_ = a.Audit.Append(ev)
	writeJSON(w, http.StatusOK, api.UserChange{User: name, Disabled: &disabled})
}

// setPassword gives name a new password and ends every token issued before.
func (a *API) setPassword(name, password string, svc *twofa.Service) error {
	if len(password) < MinPasswordLen || len(password) > accounts.MaxPasswordBytes {
		return protocol.Refuse(protocol.ReasonBadRequest, "passwords are %d to %d bytes", MinPasswordLen, accounts.MaxPasswordBytes)
	}
	h, err := a.hashes().Hash(password, a.PasswordParams)
	if errors.Is(err, accounts.ErrBusy) {
		return protocol.Refuse(protocol.ReasonRateLimited, "too many password hashes at once; try again shortly")
	}
	if err != nil {
		return err
	}
	nowMs := a.Now().UnixMilli()
	if _, err := a.Store.UpdateUser(name, func(u *store.User) error {
		u.PasswordHash, u.TokenGen = h, store.NextTokenGen(u.TokenGen, nowMs)
		return nil
	}); err != nil {
		return err
	}
	a.tokensEnded(svc, name)
	return nil
}

// tokensEnded ends what the user's old tokens still hold open: step-up sessions here, and
// through a.Hooks.TokensEnded the user's MQTT sessions.
func (a *API) tokensEnded(svc *twofa.Service, name string) {
	svc.EndUserSessions(name)
	if a.Hooks.TokensEnded != nil {
		a.Hooks.TokensEnded(name)
	}
}

// MinPasswordLen is the shortest password accepted (OWASP ASVS 2.1.1).
const MinPasswordLen = 12

func (a *API) addUser(w http.ResponseWriter, r *http.Request) {
	var req api.AddUserRequest
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
	writeJSON(w, http.StatusCreated, api.UserAdded{Username: req.Username})
}
