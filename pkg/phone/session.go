package phone

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// ErrNoSessionEndpoint means the gateway does not answer GET /v1/session (an older gateway):
// it cannot tell the app which broker it advertises now.
var ErrNoSessionEndpoint = errors.New("the gateway does not tell its current broker (no GET /v1/session)")

// CurrentBroker asks the gateway which broker it advertises now, with the session's token. A
// session keeps the broker its login named; when the gateway moved (to a standalone broker,
// or a new advertise_mqtt_url), this is where the app learns the new address.
func CurrentBroker(ctx context.Context, s *Session) (string, error) {
	var out struct {
		BrokerURL string `json:"broker_url"`
	}
	err := Call(ctx, http.MethodGet, s.Gateway+"/v1/session", s.Token, nil, &out)
	var ae *APIError
	if errors.As(err, &ae) && (ae.Status == http.StatusNotFound || ae.Status == http.StatusMethodNotAllowed) {
		return "", ErrNoSessionEndpoint
	}
	if err != nil {
		return "", err
	}
	if out.BrokerURL == "" {
		return "", fmt.Errorf("the gateway named no broker")
	}
	return out.BrokerURL, nil
}
