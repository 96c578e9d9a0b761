package fleet

import (
	"crypto/tls"
	"fmt"

	"telematics/pkg/protocol"
)

// carTLS is the TLS configuration car creds connects with: the fleet's, plus the car's device
// certificate when its credentials carry one (Credentials.Cert and CertKey), which admits it
// over mutual TLS. The certificate is presented only to a TLS broker URL; the token is sent
// as before, for a broker that does not ask for certificates.
func (f *Fleet) carTLS(creds protocol.Credentials) (*tls.Config, error) {
	if creds.Cert == "" {
		return f.cfg.TLSConfig, nil
	}
	pair, err := tls.X509KeyPair([]byte(creds.Cert), []byte(creds.CertKey))
	if err != nil {
		return nil, fmt.Errorf("car %s: device certificate and key: %w", creds.VIN, err)
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.cfg.TLSConfig != nil {
		c = f.cfg.TLSConfig.Clone()
	}
	c.Certificates = []tls.Certificate{pair}
	return c, nil
}
