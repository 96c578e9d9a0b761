package console

import (
	"encoding/base64"
	"errors"
	"net/http"
	"time"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/httpapi"
	"telematics/gateway/operators"
	"telematics/gateway/twofa"
	"telematics/pkg/protocol"
)

// LoginRequest is POST /console/api/login. Code is the TOTP code (or a recovery code), empty
// at the first login, before enrollment.
type LoginRequest struct {
	Operator string `json:"operator"`
	Password string `json:"password"`
	Code     string `json:"code,omitempty"`
}

// Session is what a logged-in page knows of itself; Enroll is set instead at a first login.
type Session struct {
	Operator string      `json:"operator"`
	Role     string      `json:"role,omitempty"`
	Stage    string      `json:"stage"`
	CSRF     string      `json:"csrf"`
	Expires  int64       `json:"expires"`
	Enroll   *Enrollment `json:"enroll,omitempty"`
	// RecoveryCodes are shown once, when an enrollment is confirmed.
	RecoveryCodes []string `json:"recovery_codes,omitempty"`
}

// Enrollment is a pending TOTP secret to add to an authenticator app.
type Enrollment struct {
	QRPNG  string `json:"qr_png"` // data: URL of the QR code
	Secret string `json:"secret"` // for typing in by hand
	URL    string `json:"url"`
}

// CodeRequest is POST /console/api/enroll.
type CodeRequest struct {
	Code string `json:"code"`
}

// login checks the password, then the second factor: an operator with TOTP gets a full
// session; one without gets a pending enrollment and a session that may only confirm it.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if msg := crossSite(r); msg != "" {
		httpapi.Error(w, http.StatusForbidden, protocol.ReasonForbidden, msg)
		return
	}
	var req LoginRequest
	if err := httpapi.DecodeBody(r, &req); err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	ip := clientIP(r)
	// Every attempt takes a token from its address's bucket, a successful one gives it back.
	if !c.d.LoginLimit.Take(ip) {
		httpapi.Error(w, http.StatusTooManyRequests, protocol.ReasonRateLimited, "too many failed logins from this address; wait a few minutes")
		return
	}
	ev := audit.Event{TsMs: c.now().UnixMilli(), Kind: audit.KindLogin, ClientID: "console@" + ip, Action: "console_login", Outcome: "refused"}
	if !operators.ValidName(req.Operator) || req.Password == "" || len(req.Code) > 64 {
		httpapi.Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "give operator, password and (once enrolled) code")
		return
	}
	subject := twofa.OperatorSubject(req.Operator)
	ev.User = subject
	fail := func(err error) {
		ev.Reason = string(protocol.ReasonOf(err))
		c.audit(ev)
		httpapi.Fail(w, c.log, err)
	}
	op, err := c.checkPassword(r, req.Operator, req.Password, &ev)
	if err != nil {
		fail(err)
		return
	}
	if err := c.d.TwoFA.CheckLocked(subject); err != nil {
		fail(err)
		return
	}
	st, err := c.d.TwoFA.Status(subject)
	if err != nil {
		fail(err)
		return
	}
	ctx, cancel := reqCtx(r)
	defer cancel()
	if !st.Enrolled {
		en, err := c.d.TwoFA.Enroll(subject, ev.ClientID, "")
		if err != nil {
			fail(err)
			return
		}
		rec, err := c.newSession(ctx, w, r, op, stageEnroll, "")
		if err != nil {
			fail(err)
			return
		}
		ev.Outcome, ev.Detail = "enrollment_started", "password=right"
		c.audit(ev)
		c.d.LoginLimit.Refund(ip)
		httpapi.WriteJSON(w, http.StatusOK, Session{Operator: op.Name, Stage: stageEnroll, CSRF: rec.CSRF, Expires: rec.ExpiresMs,
			Enroll: &Enrollment{QRPNG: "data:image/png;base64," + base64.StdEncoding.EncodeToString(en.PNG), Secret: en.Secret, URL: en.URL}})
		return
	}
	if req.Code == "" {
		fail(protocol.Refuse(protocol.ReasonTOTPRequired, "enter the code of your authenticator app"))
		return
	}
	var verr error
	if isDigits(req.Code) {
		_, verr = c.d.TwoFA.Verify(subject, ev.ClientID, req.Code)
	} else {
		_, verr = c.d.TwoFA.VerifyRecovery(subject, ev.ClientID, req.Code)
	}
	if verr != nil {
		fail(verr)
		return
	}
	rec, err := c.newSession(ctx, w, r, op, stageFull, "")
	if err != nil {
		fail(err)
		return
	}
	ev.Outcome, ev.Reason = "ok", ""
	c.audit(ev)
	c.d.LoginLimit.Refund(ip)
	httpapi.WriteJSON(w, http.StatusOK, Session{Operator: op.Name, Role: string(op.Role), Stage: stageFull, CSRF: rec.CSRF, Expires: rec.ExpiresMs})
}

// confirmEnrollment activates the pending secret with a code of it and turns the enrollment
// session into a full one (a new token).
func (c *Console) confirmEnrollment(w http.ResponseWriter, r *http.Request) {
	s := sessionOf(r)
	var req CodeRequest
	if err := httpapi.DecodeBody(r, &req); err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	if len(req.Code) > 64 {
		httpapi.Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "codes are 6 digits")
		return
	}
	subject := twofa.OperatorSubject(s.op.Name)
	codes, err := c.d.TwoFA.Confirm(subject, "console@"+clientIP(r), req.Code)
	if err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	ctx, cancel := reqCtx(r)
	defer cancel()
	rec, err := c.newSession(ctx, w, r, s.op, stageFull, s.key)
	if err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	c.audit(audit.Event{TsMs: c.now().UnixMilli(), Kind: audit.KindLogin, User: subject,
		ClientID: "console@" + clientIP(r), Action: "console_login", Outcome: "ok", Detail: "enrollment confirmed"})
	httpapi.WriteJSON(w, http.StatusOK, Session{Operator: s.op.Name, Role: string(s.op.Role), Stage: stageFull, CSRF: rec.CSRF,
		Expires: rec.ExpiresMs, RecoveryCodes: codes})
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := reqCtx(r)
	defer cancel()
	if err := c.deleteSession(ctx, w, r, sessionOf(r).key); err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (c *Console) session(w http.ResponseWriter, r *http.Request) {
	s := sessionOf(r)
	httpapi.WriteJSON(w, http.StatusOK, Session{Operator: s.op.Name, Role: string(s.op.Role), Stage: s.rec.Stage,
		CSRF: s.rec.CSRF, Expires: s.rec.ExpiresMs})
}

// checkPassword checks an operator's password under the operators' lockout. A name no
// operator has costs the same hash and gets the same answer.
func (c *Console) checkPassword(r *http.Request, name, password string, ev *audit.Event) (operators.Operator, error) {
	lockedOut := func(until time.Time) error {
		return protocol.Refuse(protocol.ReasonLockedOut, "too many failed logins for %q; try again after %s",
			name, until.UTC().Format(time.RFC3339))
	}
	att, until, err := c.d.OperatorLockout.Reserve(name)
	if err != nil {
		ev.Detail = "password=unchecked"
		if errors.Is(err, accounts.ErrInFlight) {
			return operators.Operator{}, protocol.Refuse(protocol.ReasonRateLimited, "too many logins for %q at once; try again shortly", name)
		}
		return operators.Operator{}, lockedOut(until)
	}
	ctx, cancel := reqCtx(r)
	op, err := c.d.Operators.Get(ctx, name)
	cancel()
	if err == nil {
		err = c.d.Hashes.Verify(password, op.PasswordHash)
	} else if errors.Is(err, operators.ErrNotFound) {
		if err = c.d.Hashes.Verify(password, c.dummyHash()); !errors.Is(err, accounts.ErrBusy) {
			err = accounts.ErrMismatch
		}
	}
	switch {
	case err == nil:
		att.Succeeded()
		ev.Detail = "password=right"
		return op, nil
	case errors.Is(err, accounts.ErrMismatch):
		ev.Detail = "password=wrong"
		if until, locked := att.Failed(); locked {
			return operators.Operator{}, lockedOut(until)
		}
		return operators.Operator{}, protocol.Refuse(protocol.ReasonUnauthenticated, "wrong operator name or password")
	case errors.Is(err, accounts.ErrBusy):
		att.Cancel()
		ev.Detail = "password=unchecked"
		return operators.Operator{}, protocol.Refuse(protocol.ReasonRateLimited, "too many logins at once; try again shortly")
	default:
		att.Cancel()
		return operators.Operator{}, err
	}
}

func (c *Console) dummyHash() string {
	c.dummyOnce.Do(func() { c.dummy, _ = accounts.Hash("no such operator", c.d.PasswordParams) })
	return c.dummy
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
