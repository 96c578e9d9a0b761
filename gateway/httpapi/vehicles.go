package httpapi

import (
	"errors"
	"fmt"
	"net/http"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// reissue issues a car new credentials and retires its old token: for a car whose token may
// have leaked (a dumped head unit, a car sold without a factory reset). The new token is
// recorded before it is returned, so an answered reissue survives a crash.
func (a *API) reissue(w http.ResponseWriter, r *http.Request) {
	vin := r.PathValue("vin")
	if !protocol.ValidVIN(vin) {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%q is not a VIN", vin))
		return
	}
	var req api.ReissueRequest
	if err := decodeOptionalBody(r, &req); err != nil {
		Fail(w, a.Log, err)
		return
	}
	cred, err := a.Reissue(vin, req.Cert, "")
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, cred)
}

// Reissue issues the car vin new credentials (with a device certificate if cert) and retires
// its old token; actor (the console's operator, "" for the admin API) is the audit record's
// client id. Refusals: an unknown car (vehicle_unknown), a decommissioned one, a certificate
// without a device CA (bad_request).
func (a *API) Reissue(vin string, cert bool, actor string) (protocol.Credentials, error) {
	if cert && a.DeviceCA == nil {
		return protocol.Credentials{}, protocol.Refuse(protocol.ReasonBadRequest, errNoDeviceCA)
	}
	v, err := a.Store.GetVehicle(vin)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return protocol.Credentials{}, protocol.Refuse(protocol.ReasonVehicleUnknown, "no such vehicle")
		}
		return protocol.Credentials{}, err
	}
	if v.DecommissionedMs != 0 {
		// New credentials would undo the retirement of the old ones.
		return protocol.Credentials{}, protocol.Refuse(protocol.ReasonBadRequest, "%s is decommissioned: it gets no new credentials", vin)
	}
	tok, jti, exp, err := a.Issuer.IssueID(vin, protocol.RoleVehicle, a.VehicleTokenTTL)
	if err != nil {
		return protocol.Credentials{}, err
	}
	linkKey, linkCert, err := sign.NewLinkIdentity(a.GatewayKey, vin, a.Now(), exp)
	if err != nil {
		return protocol.Credentials{}, err
	}
	cred := protocol.Credentials{VIN: vin, ClientID: vin, Username: vin, Token: tok, LinkKey: linkKey, LinkCert: &linkCert, CAPEM: a.CAPEM}
	serial, err := a.issueCert(cert, &cred, jti)
	if err != nil {
		return protocol.Credentials{}, err
	}
	// The old certificate names the old token's id: recording the new id retires both.
	if err := a.Store.SetVehicleCredentials(vin, jti, serial); err != nil {
		return protocol.Credentials{}, err
	}
	detail := ""
	if serial != "" {
		detail = "device_cert=" + serial
	}
	_ = a.Audit.Append(audit.Event{TsMs: a.Now().UnixMilli(), Kind: audit.KindAdmin, VIN: vin, ClientID: actor, Outcome: "credentials_reissued",
		Detail: detail})
	if a.Hooks.TokenRetired != nil {
		a.Hooks.TokenRetired(vin, jti)
	}
	cred.GatewayKey, _ = sign.EncodePublic(a.Hooks.CarKey(vin).Public())
	return cred, nil
}

// MaxVehiclesPerRequest bounds one provisioning call.
const MaxVehiclesPerRequest = 100_000

func (a *API) addVehicles(w http.ResponseWriter, r *http.Request) {
	var req api.AddVehiclesRequest
	if err := DecodeBody(r, &req); err != nil {
		Fail(w, a.Log, err)
		return
	}
	if req.Count < 0 || req.Count+len(req.VINs) == 0 || req.Count+len(req.VINs) > MaxVehiclesPerRequest {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("give 1 to %d vins or a count", MaxVehiclesPerRequest))
		return
	}
	if req.Cert && a.DeviceCA == nil {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, errNoDeviceCA)
		return
	}
	seen := map[string]bool{}
	for _, v := range req.VINs {
		if !protocol.ValidVIN(v) {
			Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%q is not a VIN (17 characters, digits and capitals without I, O, Q)", v))
			return
		}
		if seen[v] {
			Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%s given twice", v))
			return
		}
		seen[v] = true
	}
	vins := append([]string(nil), req.VINs...)
	for i := 0; i < req.Count; i++ {
		vins = append(vins, RandomVIN())
	}
	nowMs := a.Now().UnixMilli()
	vs := make([]store.Vehicle, len(vins))
	out := make([]protocol.Credentials, len(vins))
	for i, v := range vins {
		tok, jti, exp, err := a.Issuer.IssueID(v, protocol.RoleVehicle, a.VehicleTokenTTL)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		// The car's local-link identity, certified by the key phones learn at login and valid as
		// long as the token: reissuing makes a new one.
		linkKey, linkCert, err := sign.NewLinkIdentity(a.GatewayKey, v, a.Now(), exp)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		pub, _ := sign.EncodePublic(a.Hooks.CarKey(v).Public())
		out[i] = protocol.Credentials{VIN: v, ClientID: v, Username: v, Token: tok, GatewayKey: pub,
			LinkKey: linkKey, LinkCert: &linkCert, CAPEM: a.CAPEM}
		serial, err := a.issueCert(req.Cert, &out[i], jti)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		vs[i] = store.Vehicle{VIN: v, CreatedMs: nowMs, TokenID: jti, CertSerial: serial}
	}
	if err := a.Store.AddVehicles(vs); err != nil {
		if errors.Is(err, store.ErrExists) {
			Error(w, http.StatusConflict, protocol.ReasonDuplicate, err.Error())
			return
		}
		Fail(w, a.Log, err)
		return
	}
	_ = a.Audit.Append(audit.Event{TsMs: nowMs, Kind: audit.KindAdmin, Outcome: "vehicles_added",
		Detail: fmt.Sprintf("%d vehicles", len(vins))})
	writeJSON(w, http.StatusCreated, out)
}

// view is what the admin API shows of v: the stored car, its twin and its whitelist.
func (a *API) view(v store.Vehicle) api.VehicleView {
	out := api.VehicleView{VIN: v.VIN, CreatedMs: v.CreatedMs, Users: v.Users, TokenID: v.TokenID, CertSerial: v.CertSerial,
		Reissued: v.Reissued, DecommissionedMs: v.DecommissionedMs, RetiredMs: v.RetiredMs}
	if a.Keys != nil {
		st := keyStatusView(a.Keys.Status(v.VIN))
		out.Keys = &st
	}
	if t, ok := a.Twins.Twin(v.VIN); ok {
		out.Twin = &api.Twin{VIN: t.VIN, Status: t.Status, StatusMs: t.StatusMs, TelemetryMs: t.TelemetryMs,
			TelemetrySeq: t.TelemetrySeq, Signals: t.Signals}
	}
	return out
}

func (a *API) listVehicles(w http.ResponseWriter, _ *http.Request) {
	vs, err := a.Store.ListVehicles()
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	out := make([]api.VehicleView, len(vs))
	for i, v := range vs {
		out[i] = a.view(v)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) showVehicle(w http.ResponseWriter, r *http.Request) {
	vin := r.PathValue("vin")
	if !protocol.ValidVIN(vin) {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%q is not a VIN", vin))
		return
	}
	v, err := a.Store.GetVehicle(vin)
	if errors.Is(err, store.ErrNotFound) {
		Error(w, http.StatusNotFound, protocol.ReasonVehicleUnknown, "no vehicle "+vin)
		return
	}
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, a.view(v))
}

func (a *API) assign(w http.ResponseWriter, r *http.Request) {
	vin := r.PathValue("vin")
	var req api.AssignRequest
	if err := DecodeBody(r, &req); err != nil {
		Fail(w, a.Log, err)
		return
	}
	// Through the key registry: the user's keys get the new role (or are revoked for "none")
	// in the same transaction, and the car a new whitelist version; audited there.
	out, err := a.Keys.Assign(r.Context(), vin, req.User, req.Role)
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, roleChangeView(out))
}
