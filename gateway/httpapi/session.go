package httpapi

import (
	"net/http"

	"telematics/pkg/token"
)

// SessionResponse is GET /v1/session: what the gateway tells a logged-in app now. The broker
// it names may differ from the one the login named (the gateway moved to a standalone broker,
// or advertise_mqtt_url changed); an app whose broker does not answer asks here.
type SessionResponse struct {
	User        string `json:"user"`
	ExpiresAtMs int64  `json:"expires_at"`
	BrokerURL   string `json:"broker_url"`
}

// sessionRoutes registers GET /v1/session (bearer app token).
func (a *API) sessionRoutes(mux *http.ServeMux, verifier *token.Verifier) {
	mux.HandleFunc("GET /v1/session", func(w http.ResponseWriter, r *http.Request) {
		c, err := a.BearerClaims(r, verifier)
		if err != nil {
			Fail(w, a.Log, err)
			return
		}
		out := SessionResponse{User: c.Subject, BrokerURL: a.BrokerURL}
		if c.ExpiresAt != nil {
			out.ExpiresAtMs = c.ExpiresAt.UnixMilli()
		}
		writeJSON(w, http.StatusOK, out)
	})
}
