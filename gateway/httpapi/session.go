package httpapi

import (
	"net/http"

	"telematics/pkg/api"
	"telematics/pkg/token"
)

// sessionRoutes registers GET /v1/session (bearer app token).
func (a *API) sessionRoutes(mux *http.ServeMux, verifier *token.Verifier) {
	mux.HandleFunc("GET /v1/session", func(w http.ResponseWriter, r *http.Request) {
		c, err := a.BearerClaims(r, verifier)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		out := api.SessionResponse{User: c.Subject, BrokerURL: a.BrokerURL}
		if c.ExpiresAt != nil {
			out.ExpiresAtMs = c.ExpiresAt.UnixMilli()
		}
		writeJSON(w, http.StatusOK, out)
	})
}
