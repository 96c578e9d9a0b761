package runcmd

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"slices"

	"telematics/pkg/protocol"
	"telematics/pkg/tlsconf"
)

// withCertFiles gives the car whose VIN the certificate in certPath names (its common name)
// that certificate and the private key in keyPath (run.cert, run.key), for mutual TLS. The key
// file must not be readable by group or others.
func withCertFiles(creds []protocol.Credentials, certPath, keyPath string) ([]protocol.Credentials, error) {
	if err := tlsconf.CheckKeyFile(keyPath); err != nil {
		return nil, fmt.Errorf("run.key: %w", err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("run.cert: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("run.key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("run.cert and run.key (%s, %s): %w", certPath, keyPath, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("run.cert %s: %w", certPath, err)
	}
	vin := leaf.Subject.CommonName
	for i := range creds {
		if creds[i].VIN == vin {
			out := slices.Clone(creds)
			out[i].Cert, out[i].CertKey = string(certPEM), string(keyPEM)
			return out, nil
		}
	}
	return nil, fmt.Errorf("run.cert %s is %q's certificate, which is not a car of this fleet", certPath, vin)
}
