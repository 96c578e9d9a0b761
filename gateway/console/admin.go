package console

import (
	"errors"
	"net/http"

	"telematics/gateway/audit"
	"telematics/gateway/httpapi"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
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
	_ = c.d.Audit.Append(audit.Event{TsMs: c.now().UnixMilli(), Kind: audit.KindAdmin, User: name, ClientID: actor,
		Outcome: "lockout_cleared", Detail: detail})
	httpapi.WriteJSON(w, http.StatusOK, UnlockResult{User: name, LockoutCleared: true})
}

func errorsIsNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }
