package httpapi

import (
	"errors"
	"fmt"
	"net/http"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/gateway/operators"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// operatorRoutes registers the administration of console operators (package operators).
//
//	POST   /v1/admin/operators          {"name","role","password"}: a new operator
//	GET    /v1/admin/operators          every operator (never a hash)
//	DELETE /v1/admin/operators/{name}   remove one, with their TOTP enrollment and lockout
//
// Each change is audited in the transaction that makes it.
func (a *API) operatorRoutes(mux *http.ServeMux, ops *operators.Store, svc *twofa.Service) {
	mux.Handle("POST /v1/admin/operators", a.admin(func(w http.ResponseWriter, r *http.Request) {
		var req api.AddOperatorRequest
		if err := DecodeBody(r, &req); err != nil {
			Fail(w, a.Log, err)
			return
		}
		var problems []error
		if !operators.ValidName(req.Name) {
			problems = append(problems, fmt.Errorf("name: %w", operators.ErrBadName))
		}
		if !operators.Role(req.Role).Valid() {
			problems = append(problems, fmt.Errorf("role %q: %w", req.Role, operators.ErrBadRole))
		}
		if len(req.Password) < MinPasswordLen || len(req.Password) > accounts.MaxPasswordBytes {
			problems = append(problems, fmt.Errorf("password: %d to %d bytes", MinPasswordLen, accounts.MaxPasswordBytes))
		}
		if len(problems) > 0 {
			Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, errors.Join(problems...).Error())
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
		now := a.Now().UnixMilli()
		op := operators.Operator{Name: req.Name, Role: operators.Role(req.Role), PasswordHash: h, CreatedMs: now}
		err = ops.Add(r.Context(), op, func(tx kv.Tx) error {
			// A fresh operator starts without an enrollment or lockout an earlier one of the
			// same name left.
			if err := svc.RemoveUserTx(tx, twofa.OperatorSubject(op.Name)); err != nil {
				return err
			}
			return a.Audit.AppendTx(tx, audit.Event{TsMs: now, Kind: audit.KindAdmin, User: twofa.OperatorSubject(op.Name),
				ClientID: "admin@" + clientIP(r), Outcome: "operator_added", Detail: "role=" + req.Role})
		})
		if errors.Is(err, operators.ErrExists) {
			Error(w, http.StatusConflict, protocol.ReasonDuplicate, err.Error()+" (remove it first to change its role)")
			return
		}
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		writeJSON(w, http.StatusCreated, api.OperatorView{Name: op.Name, Role: string(op.Role), CreatedMs: op.CreatedMs})
	}))
	mux.Handle("GET /v1/admin/operators", a.admin(func(w http.ResponseWriter, r *http.Request) {
		list, err := ops.List(r.Context())
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		out := make([]api.OperatorView, 0, len(list))
		for _, op := range list {
			st, err := svc.Status(twofa.OperatorSubject(op.Name))
			if err != nil {
				Fail(w, a.Log, err)
				return
			}
			out = append(out, api.OperatorView{Name: op.Name, Role: string(op.Role), CreatedMs: op.CreatedMs, TOTPEnrolled: st.Enrolled})
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.Handle("DELETE /v1/admin/operators/{name}", a.admin(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if !operators.ValidName(name) {
			Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, operators.ErrBadName.Error())
			return
		}
		now := a.Now().UnixMilli()
		err := ops.Remove(r.Context(), name, func(tx kv.Tx) error {
			if err := svc.RemoveUserTx(tx, twofa.OperatorSubject(name)); err != nil {
				return err
			}
			return a.Audit.AppendTx(tx, audit.Event{TsMs: now, Kind: audit.KindAdmin, User: twofa.OperatorSubject(name),
				ClientID: "admin@" + clientIP(r), Outcome: "operator_removed", Detail: "sessions ended, 2fa enrollment removed"})
		})
		if errors.Is(err, operators.ErrNotFound) {
			Error(w, http.StatusNotFound, protocol.ReasonBadRequest, "no operator "+name+" (see gateway admin operator list)")
			return
		}
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, api.OperatorRemoved{Name: name, Removed: true})
	}))
}
