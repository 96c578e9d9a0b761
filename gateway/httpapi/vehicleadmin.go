package httpapi

import (
	"fmt"
	"net/http"

	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// vehicleAdminRoutes registers the admin's offboarding of users and cars, each through the
// key registry (the role, the keys and the car's whitelist in one transaction, audited):
//
//	POST /v1/admin/vehicles/{vin}/unassign              {"user"} → the role change (role "none")
//	POST /v1/admin/vehicles/{vin}/transfer              {"owner"} → users and keys removed
//	POST /v1/admin/vehicles/{vin}/decommission          {"retire_now"} → the empty whitelist
//	POST /v1/admin/vehicles/{vin}/keys/{key_id}/revoke  {"keep_share"} → the revocation
func (a *API) vehicleAdminRoutes(mux *http.ServeMux) {
	mux.Handle("POST /v1/admin/vehicles/{vin}/unassign", a.admin(func(w http.ResponseWriter, r *http.Request) {
		var req api.UnassignRequest
		if !a.decodeForVIN(w, r, &req) {
			return
		}
		out, err := a.Keys.Unassign(r.Context(), r.PathValue("vin"), req.User)
		a.answer(w, roleChangeView(out), err)
	}))
	mux.Handle("POST /v1/admin/vehicles/{vin}/transfer", a.admin(func(w http.ResponseWriter, r *http.Request) {
		var req api.TransferRequest
		if !a.decodeForVIN(w, r, &req) {
			return
		}
		out, err := a.Keys.Transfer(r.Context(), r.PathValue("vin"), req.Owner)
		a.answer(w, transferView(out), err)
	}))
	mux.Handle("POST /v1/admin/vehicles/{vin}/decommission", a.admin(func(w http.ResponseWriter, r *http.Request) {
		var req api.DecommissionRequest
		if !a.decodeForVIN(w, r, &req) {
			return
		}
		out, err := a.Keys.Decommission(r.Context(), r.PathValue("vin"), req.RetireNow)
		a.answer(w, decommissionView(out), err)
	}))
	mux.Handle("POST /v1/admin/vehicles/{vin}/keys/{key_id}/revoke", a.admin(func(w http.ResponseWriter, r *http.Request) {
		var req api.AdminRevokeRequest
		if !a.decodeForVIN(w, r, &req) {
			return
		}
		out, err := a.Keys.AdminRevoke(r.Context(), r.PathValue("vin"), r.PathValue("key_id"), req.KeepShare)
		a.answer(w, revocationView(out), err)
	}))
}

// decodeForVIN checks the path's VIN and decodes the body (an empty body is an empty
// request); it answers the refusal itself and reports whether to go on.
func (a *API) decodeForVIN(w http.ResponseWriter, r *http.Request, v any) bool {
	if vin := r.PathValue("vin"); !protocol.ValidVIN(vin) {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%q is not a VIN", vin))
		return false
	}
	if r.ContentLength == 0 {
		return true
	}
	if err := DecodeBody(r, v); err != nil {
		Fail(w, a.Log, err)
		return false
	}
	return true
}

// answer writes out, or err as a refusal.
func (a *API) answer(w http.ResponseWriter, out any, err error) {
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}
