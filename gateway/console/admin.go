package console

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"telematics/gateway/audit"
	"telematics/gateway/httpapi"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// OperatorView is an operator as the console lists them (never the hash).
type OperatorView struct {
	Name      string `json:"name"`
	Role      string `json:"role"`
	CreatedMs int64  `json:"created"`
	Enrolled  bool   `json:"totp_enrolled"`
}

// listOperators is GET /console/api/operators (admin).
func (c *Console) listOperators(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := reqCtx(r)
	defer cancel()
	ops, err := c.d.Operators.List(ctx)
	if err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	out := make([]OperatorView, 0, len(ops))
	for _, op := range ops {
		st, err := c.d.TwoFA.Status(twofa.OperatorSubject(op.Name))
		if err != nil {
			httpapi.Fail(w, c.log, err)
			return
		}
		out = append(out, OperatorView{Name: op.Name, Role: string(op.Role), CreatedMs: op.CreatedMs, Enrolled: st.Enrolled})
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// UnlockResult is POST /console/api/users/{user}/unlock's answer.
type UnlockResult struct {
	User           string `json:"user"`
	LockoutCleared bool   `json:"lockout_cleared"`
}

// unlockUser is POST /console/api/users/{user}/unlock (admin): clears an app user's password
// and 2FA lockouts, keeps the enrollment; audited with the operator's name.
func (c *Console) unlockUser(w http.ResponseWriter, r *http.Request) {
	s := sessionOf(r)
	name := r.PathValue("user")
	if !protocol.ValidUser(name) {
		httpapi.Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "not a user name")
		return
	}
	if _, err := c.d.Store.GetUser(name); err != nil {
		if errorsIsNotFound(err) {
			httpapi.Error(w, http.StatusNotFound, protocol.ReasonBadRequest, "no user "+name)
			return
		}
		httpapi.Fail(w, c.log, err)
		return
	}
	actor := "console:" + s.op.Name
	password := false
	if c.d.UserLockout != nil {
		password = c.d.UserLockout.Clear(name)
	}
	if err := c.d.TwoFA.ClearLockout(name, actor); err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	detail := "totp_lockout=cleared enrollment=kept"
	if password {
		detail = "password_lockout=true " + detail
	}
	c.audit(audit.Event{TsMs: c.now().UnixMilli(), Kind: audit.KindAdmin, User: name, ClientID: actor,
		Outcome: "lockout_cleared", Detail: detail})
	httpapi.WriteJSON(w, http.StatusOK, UnlockResult{User: name, LockoutCleared: true})
}

func errorsIsNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

// actorOf is the audit's client id of the request's operator.
func actorOf(r *http.Request) string { return "console:" + sessionOf(r).op.Name }

// knownUser answers the refusal itself for a malformed or unknown user name and reports
// whether to go on.
func (c *Console) knownUser(w http.ResponseWriter, name string) bool {
	if !protocol.ValidUser(name) {
		httpapi.Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "not a user name")
		return false
	}
	if _, err := c.d.Store.GetUser(name); err != nil {
		if errorsIsNotFound(err) {
			httpapi.Error(w, http.StatusNotFound, protocol.ReasonBadRequest, "no user "+name)
			return false
		}
		httpapi.Fail(w, c.log, err)
		return false
	}
	return true
}

// pathVIN is the path's VIN, upper-cased; it answers the refusal itself when it is none.
func pathVIN(w http.ResponseWriter, r *http.Request) (string, bool) {
	vin := strings.ToUpper(r.PathValue("vin"))
	if !protocol.ValidVIN(vin) {
		httpapi.Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "not a VIN (17 characters, no I, O or Q)")
		return "", false
	}
	return vin, true
}

// Reset2FAResult is POST /console/api/users/{user}/reset-2fa's answer.
type Reset2FAResult struct {
	User string `json:"user"`
	// EnrollmentRemoved is false when the user had no enrollment (the lockouts were cleared).
	EnrollmentRemoved bool `json:"enrollment_removed"`
}

// resetUser2FA is POST /console/api/users/{user}/reset-2fa (admin): removes the user's TOTP
// enrollment (they enroll again at their next step-up) and clears their lockouts, as
// `gateway admin user reset-2fa`; audited with the operator's name.
func (c *Console) resetUser2FA(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("user")
	if !c.knownUser(w, name) {
		return
	}
	actor := actorOf(r)
	removed := true
	if err := c.d.TwoFA.Reset(name, actor); errors.Is(err, twofa.ErrNotEnrolled) {
		removed = false
	} else if err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	if err := c.d.TwoFA.ClearLockout(name, actor); err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	if c.d.UserLockout != nil {
		c.d.UserLockout.Clear(name)
	}
	c.audit(audit.Event{TsMs: c.now().UnixMilli(), Kind: audit.KindAdmin, User: name, ClientID: actor,
		Outcome: "reset_2fa", Detail: fmt.Sprintf("enrollment_removed=%t", removed)})
	httpapi.WriteJSON(w, http.StatusOK, Reset2FAResult{User: name, EnrollmentRemoved: removed})
}

// reissueCredentials is POST /console/api/cars/{vin}/credentials {"cert":bool} (admin): new
// credentials for the car, the old token retired (a leaked head unit), with a new device
// certificate and its key when cert is set (as `gateway admin vehicle reissue --cert`); the
// answer holds them once, for the operator to install in the car, and nothing secret is
// kept. Audited with the operator's name.
func (c *Console) reissueCredentials(w http.ResponseWriter, r *http.Request) {
	vin, ok := pathVIN(w, r)
	if !ok {
		return
	}
	var req api.ReissueRequest
	if err := httpapi.DecodeBody(r, &req); err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	if c.d.Credentials == nil {
		httpapi.Error(w, http.StatusNotImplemented, protocol.ReasonBadRequest, "this console cannot issue credentials")
		return
	}
	cred, err := c.d.Credentials.Reissue(vin, req.Cert, actorOf(r))
	if err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, cred)
}

// RemoveResult is DELETE /console/api/cars/{vin}/users/{user}'s answer.
type RemoveResult struct {
	VIN         string `json:"vin"`
	User        string `json:"user"`
	KeysRevoked int    `json:"keys_revoked"`
	// WLVersion is the whitelist version that carries the revocations to the car (0: none).
	WLVersion uint64 `json:"wl_version"`
}

// removeUserFromCar is DELETE /console/api/cars/{vin}/users/{user} (admin): the user's role,
// share and keys on the car end in one whitelist version; audited with the operator's name.
func (c *Console) removeUserFromCar(w http.ResponseWriter, r *http.Request) {
	vin, ok := pathVIN(w, r)
	if !ok {
		return
	}
	name := r.PathValue("user")
	if !protocol.ValidUser(name) {
		httpapi.Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "not a user name")
		return
	}
	if c.d.Members == nil {
		httpapi.Error(w, http.StatusNotImplemented, protocol.ReasonBadRequest, "this console cannot change a car's users")
		return
	}
	ctx, cancel := reqCtx(r)
	defer cancel()
	rc, err := c.d.Members.Unassign(ctx, vin, name)
	if err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	c.audit(audit.Event{TsMs: c.now().UnixMilli(), Kind: audit.KindAdmin, VIN: vin, User: name, ClientID: actorOf(r),
		Outcome: "user_removed", Detail: fmt.Sprintf("keys_revoked=%d wl_version=%d", rc.KeysChanged, rc.Version)})
	httpapi.WriteJSON(w, http.StatusOK, RemoveResult{VIN: vin, User: name, KeysRevoked: rc.KeysChanged, WLVersion: rc.Version})
}
