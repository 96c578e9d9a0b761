package httpapi

import (
	"encoding/json"
	"io"
	"net/http"

	"telematics/pkg/protocol"
)

// errNoDeviceCA is the answer to a request for a device certificate when the gateway has no
// device CA.
const errNoDeviceCA = "this gateway issues no device certificates (no device CA)"

// issueCert, when want, issues car cred.VIN a device certificate naming token id jti, puts it
// with its key and the CA certificate in cred, and returns its serial; "" when not wanted.
// The certificate lives as long as the car's token.
func (a *API) issueCert(want bool, cred *protocol.Credentials, jti string) (string, error) {
	if !want {
		return "", nil
	}
	iss, err := a.DeviceCA.Issue(cred.VIN, jti, a.VehicleTokenTTL)
	if err != nil {
		return "", err
	}
	cred.Cert, cred.CertKey, cred.DeviceCA = string(iss.CertPEM), string(iss.KeyPEM), string(a.DeviceCA.CertPEM())
	return iss.Serial, nil
}

// decodeOptionalBody is DecodeBody for a request whose body may be empty (v then keeps its
// zero value).
func decodeOptionalBody(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return protocol.Refuse(protocol.ReasonBadRequest, "read body: %v", err)
	}
	if len(b) > maxBody {
		return protocol.Refuse(protocol.ReasonBadRequest, "body larger than %d bytes", maxBody)
	}
	if len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return protocol.Refuse(protocol.ReasonBadRequest, "malformed JSON body: %v", err)
	}
	return nil
}
