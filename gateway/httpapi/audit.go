package httpapi

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"telematics/gateway/audit"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

func (a *API) queryAudit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := audit.Filter{VIN: q.Get("vin"), User: q.Get("user"), Kind: q.Get("kind")}
	if f.Kind != "" && !slices.Contains(audit.Kinds, f.Kind) {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest,
			fmt.Sprintf("kind %q: want one of %s", f.Kind, strings.Join(audit.Kinds, ", ")))
		return
	}
	if n := q.Get("limit"); n != "" {
		v, err := strconv.Atoi(n)
		if err != nil || v < 0 {
			Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("limit %q: want a number, 0 or more", n))
			return
		}
		f.Limit = v
	}
	for key, dst := range map[string]*int64{"since": &f.SinceMs, "until": &f.UntilMs} {
		if n := q.Get(key); n != "" {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil || v < 0 {
				Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("%s %q: want Unix milliseconds", key, n))
				return
			}
			*dst = v
		}
	}
	evs, err := a.Audit.Query(f)
	if err != nil {
		Fail(w, a.Log, err)
		return
	}
	var out []api.AuditEvent // null for none, as the log's own answer
	if evs != nil {
		out = make([]api.AuditEvent, len(evs))
	}
	for i, e := range evs {
		out[i] = api.AuditEvent{Seq: e.Seq, TsMs: e.TsMs, Kind: e.Kind, User: e.User, ClientID: e.ClientID, VIN: e.VIN,
			CmdID: e.CmdID, Action: e.Action, Outcome: e.Outcome, Reason: e.Reason, Detail: e.Detail,
			ReceivedMs: e.ReceivedMs, SentMs: e.SentMs, CarMs: e.CarMs}
	}
	writeJSON(w, http.StatusOK, out)
}
