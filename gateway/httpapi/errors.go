package httpapi

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"

	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// Error writes the JSON error form.
func Error(w http.ResponseWriter, status int, reason protocol.Reason, msg string) {
	writeJSON(w, status, api.ErrorBody{Error: reason, Message: msg})
}

// StatusOf maps a reason to its HTTP status.
func StatusOf(r protocol.Reason) int {
	switch r {
	case protocol.ReasonBadRequest:
		return http.StatusBadRequest
	case protocol.ReasonUnauthenticated, protocol.ReasonTOTPRequired, protocol.ReasonTOTPInvalid,
		protocol.ReasonTOTPReplayed, protocol.ReasonSignatureInvalid:
		return http.StatusUnauthorized
	case protocol.ReasonForbidden, protocol.ReasonTOTPEnrollmentRequired, protocol.ReasonKeyRevoked,
		protocol.ReasonKeyExpired, protocol.ReasonKeyUnknown:
		return http.StatusForbidden
	case protocol.ReasonVehicleUnknown:
		return http.StatusNotFound
	case protocol.ReasonDuplicate:
		return http.StatusConflict
	case protocol.ReasonLockedOut, protocol.ReasonRateLimited:
		return http.StatusTooManyRequests
	case protocol.ReasonVehicleOffline:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// Fail writes err as a JSON error with the status of its reason; internal detail is logged,
// not shown.
func Fail(w http.ResponseWriter, log *slog.Logger, err error) {
	reason := protocol.ReasonOf(err)
	msg := err.Error()
	var ref *protocol.Refusal
	if errors.As(err, &ref) && ref.Err != nil {
		msg = ref.Err.Error() // the reason is in "error" already
	}
	if reason == protocol.ReasonInternal {
		log.Error("request failed", "err", err)
		msg = "internal error; see the gateway log"
	}
	Error(w, StatusOf(reason), reason, msg)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteJSON writes v with status.
func WriteJSON(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }

// DecodeBody reads a bounded JSON body into v.
func DecodeBody(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return protocol.Refuse(protocol.ReasonBadRequest, "read body: %v", err)
	}
	if len(b) > maxBody {
		return protocol.Refuse(protocol.ReasonBadRequest, "body larger than %d bytes", maxBody)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return protocol.Refuse(protocol.ReasonBadRequest, "malformed JSON body: %v", err)
	}
	return nil
}
