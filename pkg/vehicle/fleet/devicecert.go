package fleet

import (
	"crypto/tls"
	"fmt"
	"net/url"

	"telematics/pkg/protocol"
	"telematics/pkg/tlsconf"
)

// carTLS is the TLS configuration car creds connects with: the fleet's, plus the car's device
// certificate when its credentials carry one (Credentials.Cert and CertKey), which admits it
// over mutual TLS. The certificate is presented only to a TLS broker URL; the token is sent
// as before, for a broker that does not ask for certificates.
func (f *Fleet) carTLS(creds protocol.Credentials) (*tls.Config, error) {
	if creds.Cert == "" || !secureURL(f.cfg.BrokerURL) {
		return f.cfg.TLS, nil
	}
	pair, err := tls.X509KeyPair([]byte(creds.Cert), []byte(creds.CertKey))
	if err != nil {
		return nil, fmt.Errorf("car %s: device certificate and key: %w", creds.VIN, err)
	}
	c, _ := tlsconf.ClientConfig("") // the project's versions and suites; no CA file, no error
	if f.cfg.TLS != nil {
		c = f.cfg.TLS.Clone()
	}
	c.Certificates = []tls.Certificate{pair}
	return c, nil
}

// secureURL reports whether a broker URL is one of TLS (mqttc's schemes).
func secureURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && tlsconf.SecureScheme(u.Scheme)
}
