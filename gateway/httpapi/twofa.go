package httpapi

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/token"
)

// twoFactorRoutes registers the app's 2FA endpoints (bearer app token) and the admin reset.
//
//	GET  /v1/2fa            status: enrolled, pending, recovery codes left, locked until
//	POST /v1/2fa/enroll     {"proof": CODE?} → {"otpauth_url", "secret", "qr_png"}; proof (a
//	                        current code or a recovery code) is needed to replace an active one
//	POST /v1/2fa/confirm    {"code": CODE} → {"recovery_codes": [10]}, shown once
//	POST /v1/2fa/disable    {"code": CODE}
//	POST /v1/admin/users/{user}/reset-2fa   (admin) removes the enrollment and any lockout
func (a *API) twoFactorRoutes(mux *http.ServeMux, svc *twofa.Service, verifier *token.Verifier) {
	app := func(h func(w http.ResponseWriter, r *http.Request, user string)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			c, err := a.BearerClaims(r, verifier)
			if err != nil {
				Fail(w, a.Log, err)
				return
			}
			h(w, r, c.Subject)
		}
	}
	mux.HandleFunc("GET /v1/2fa", app(func(w http.ResponseWriter, r *http.Request, user string) {
		st, err := svc.Status(user)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		out := api.TOTPStatus{Enrolled: st.Enrolled, Pending: st.Pending, RecoveryCodesLeft: st.RecoveryCodesLeft,
			Mode: string(svc.Policy().Mode)}
		if !st.LockedUntil.IsZero() {
			out.LockedUntil = st.LockedUntil.UTC().Format(time.RFC3339)
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("POST /v1/2fa/enroll", app(func(w http.ResponseWriter, r *http.Request, user string) {
		var b api.TOTPCode
		if r.ContentLength != 0 {
			if err := DecodeBody(r, &b); err != nil {
				Fail(w, a.Log, err)
				return
			}
		}
		e, err := svc.Enroll(user, clientIP(r), b.Proof)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, api.TOTPEnrollment{OTPAuthURL: e.URL, Secret: e.Secret,
			QRPNG: base64.StdEncoding.EncodeToString(e.PNG)})
	}))
	mux.HandleFunc("POST /v1/2fa/confirm", app(func(w http.ResponseWriter, r *http.Request, user string) {
		var b api.TOTPCode
		if err := DecodeBody(r, &b); err != nil {
			Fail(w, a.Log, err)
			return
		}
		codes, err := svc.Confirm(user, clientIP(r), b.Code)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, api.TOTPConfirmation{RecoveryCodes: codes})
	}))
	mux.HandleFunc("POST /v1/2fa/disable", app(func(w http.ResponseWriter, r *http.Request, user string) {
		var b api.TOTPCode
		if err := DecodeBody(r, &b); err != nil {
			Fail(w, a.Log, err)
			return
		}
		if err := svc.Disable(user, clientIP(r), b.Code); err != nil {
			Fail(w, a.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, api.TOTPDisabled{Enrolled: false})
	}))
	mux.Handle("POST /v1/admin/users/{user}/reset-2fa", a.admin(func(w http.ResponseWriter, r *http.Request) {
		user := r.PathValue("user")
		if !protocol.ValidUser(user) {
			Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "not a user name")
			return
		}
		if _, err := a.Store.GetUser(user); err != nil {
			Error(w, http.StatusNotFound, protocol.ReasonBadRequest, "no user "+user)
			return
		}
		// A user without TOTP may be locked out by password failures: the lockout is cleared
		// whether or not there was an enrollment to remove.
		removed := true
		if err := svc.Reset(user, "admin@"+clientIP(r)); errors.Is(err, twofa.ErrNotEnrolled) {
			removed = false
		} else if err != nil {
			Fail(w, a.Log, err)
			return
		}
		if err := svc.ClearLockout(user, "admin@"+clientIP(r)); err != nil {
			Fail(w, a.Log, err)
			return
		}
		a.lockout().Clear(user) // the password lockout too (`user unlock` clears both, keeping the enrollment)
		_ = a.Audit.Append(audit.Event{TsMs: a.Now().UnixMilli(), Kind: audit.KindAdmin, User: user, ClientID: clientIP(r),
			Outcome: "reset_2fa", Detail: fmt.Sprintf("enrollment_removed=%t", removed)})
		enrolled := false
		writeJSON(w, http.StatusOK, api.UserChange{User: user, Enrolled: &enrolled, EnrollmentRemoved: &removed, LockoutCleared: true})
	}))
}

// TwoFactorGuard adapts the 2FA service to password login, once the password was right: a
// user whose second factor is locked out (wrong codes) cannot log in either, and a code is
// asked when the policy wants one at login. Wrong passwords are counted by the password
// lockout (accounts.Lockout), apart from the second factor's.
type TwoFactorGuard struct{ Svc *twofa.Service }

// BeforeLogin refuses a user whose second factor is locked out.
func (g TwoFactorGuard) BeforeLogin(user string) error { return g.Svc.CheckLocked(user) }

// AfterPassword asks for the code the login policy needs.
func (g TwoFactorGuard) AfterPassword(user, session, code string) error {
	_, err := g.Svc.Decide(user, session, twofa.ActionLogin, code)
	return err
}
