package httpapi

import (
	"fmt"
	"net/http"

	"telematics/gateway/keys"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/token"
)

// keyRoutes registers the digital-key endpoints (bearer app token; the session for 2FA step-up
// is the token's id, i.e. one login):
//
//	POST /v1/keys/pair    {"vin","public_key","label","totp"} → 201 the new whitelist entry
//	GET  /v1/keys?vin=VIN → whitelist version, acknowledged version, keys (owners see all)
//	POST /v1/keys/share   {"vin","user","role","not_after","channels","totp"} → 201 the share
//	POST /v1/keys/revoke  {"vin","key_id","totp","allow_last_owner","keep_share"} → the new
//	                      version, whose key it was, and whether their share ended with it
//	POST /v1/keys/remove-user {"vin","user","totp"} → an owner removes a driver or valet: all
//	                      their keys revoked, their share and role ended, one new version
func (a *API) keyRoutes(mux *http.ServeMux, svc *keys.Service, verifier *token.Verifier) {
	app := func(h func(w http.ResponseWriter, r *http.Request, c *token.Claims)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			c, err := a.BearerClaims(r, verifier)
			if err != nil {
				Fail(w, a.Log, err)
				return
			}
			h(w, r, c)
		}
	}
	mux.HandleFunc("POST /v1/keys/pair", app(func(w http.ResponseWriter, r *http.Request, c *token.Claims) {
		var b api.PairRequest
		if err := DecodeBody(r, &b); err != nil {
			Fail(w, a.Log, err)
			return
		}
		k, err := svc.Pair(r.Context(), c.Subject, c.ID, b.VIN, b.PublicKey, b.Label, b.TOTP)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		writeJSON(w, http.StatusCreated, k)
	}))
	mux.HandleFunc("GET /v1/keys", app(func(w http.ResponseWriter, r *http.Request, c *token.Claims) {
		vin := r.URL.Query().Get("vin")
		if vin == "" { // every car the user holds a role on
			all, err := svc.ListAll(c.Subject)
			if err != nil {
				Fail(w, a.Log, err)
				return
			}
			var out []api.KeyStatus
			if all != nil {
				out = make([]api.KeyStatus, len(all))
			}
			for i, st := range all {
				out[i] = keyStatusView(st)
			}
			writeJSON(w, http.StatusOK, out)
			return
		}
		if !protocol.ValidVIN(vin) {
			Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%q is not a VIN", vin))
			return
		}
		st, err := svc.List(c.Subject, vin)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, keyStatusView(st))
	}))
	mux.HandleFunc("POST /v1/keys/share", app(func(w http.ResponseWriter, r *http.Request, c *token.Claims) {
		var b api.ShareRequest
		if err := DecodeBody(r, &b); err != nil {
			Fail(w, a.Log, err)
			return
		}
		sh, err := svc.Share(r.Context(), c.Subject, c.ID, keys.ShareRequest{VIN: b.VIN, User: b.User, Role: b.Role,
			NotAfterMs: b.NotAfterMs, Channels: b.Channels, TOTP: b.TOTP})
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		writeJSON(w, http.StatusCreated, shareView(sh))
	}))
	mux.HandleFunc("POST /v1/keys/revoke", app(func(w http.ResponseWriter, r *http.Request, c *token.Claims) {
		var b api.RevokeRequest
		if err := DecodeBody(r, &b); err != nil {
			Fail(w, a.Log, err)
			return
		}
		rv, err := svc.RevokeKey(r.Context(), c.Subject, c.ID, keys.RevokeRequest{VIN: b.VIN, KeyID: b.KeyID, TOTP: b.TOTP,
			AllowLastOwner: b.AllowLastOwner, KeepShare: b.KeepShare})
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, revocationView(rv))
	}))
	mux.HandleFunc("POST /v1/keys/remove-user", app(func(w http.ResponseWriter, r *http.Request, c *token.Claims) {
		var b api.RemoveUserRequest
		if err := DecodeBody(r, &b); err != nil {
			Fail(w, a.Log, err)
			return
		}
		rc, err := svc.RemoveUser(r.Context(), c.Subject, c.ID, keys.RemoveUserRequest{VIN: b.VIN, User: b.User, TOTP: b.TOTP})
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, roleChangeView(rc))
	}))
}
