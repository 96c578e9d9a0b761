package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"telematics/pkg/sign"
)

// Files of the local certificate authority, in the directory given to EnsureLocalCA.
const (
	CAFile        = "ca.pem"     // the CA certificate: what clients trust (--ca, ca_pem)
	CAKeyFile     = "ca.key"     // its private key, 0600
	ServerFile    = "server.pem" // the server certificate, signed by the CA
	ServerKeyFile = "server.key" // its private key, 0600
)

// Validity of what EnsureLocalCA makes. A server certificate of a development CA lives less
// than two years, as browsers and most clients require of publicly trusted ones too.
const (
	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 397 * 24 * time.Hour
	// serverRenewal: a server certificate with less left than this is made again at start.
	serverRenewal = 30 * 24 * time.Hour
)

// DefaultHosts are the names and addresses the local server certificate covers besides the
// configured ones.
var DefaultHosts = []string{"localhost", "127.0.0.1", "::1"}

// LocalCA is what EnsureLocalCA found or made.
type LocalCA struct {
	Files Files  // Cert and Key: the server certificate and key
	CA    string // the CA certificate's path
	// Made lists the files it wrote.
	Made []string
}

// EnsureLocalCA makes, in dir, a certificate authority (ECDSA P-256; ca.pem, ca.key) and a
// server certificate it signs for hosts (server.pem, server.key), each made only when
// missing, as development tools do. A server certificate that does not cover every host of
// hosts, or expires within 30 days, is made again by the same CA. Key files are written 0600
// and checked like every secret file. now is the clock of the validity period.
func EnsureLocalCA(dir string, hosts []string, now time.Time) (LocalCA, error) {
	out := LocalCA{
		Files: Files{Cert: filepath.Join(dir, ServerFile), Key: filepath.Join(dir, ServerKeyFile)},
		CA:    filepath.Join(dir, CAFile),
	}
	caKeyPath := filepath.Join(dir, CAKeyFile)
	for _, p := range []string{caKeyPath, out.Files.Key} {
		if err := checkIfExists(p); err != nil {
			return out, err
		}
	}
	caCert, caKey, err := readPair(out.CA, caKeyPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if caCert, caKey, err = newCA(now); err != nil {
			return out, err
		}
		if err := writePair(out.CA, caKeyPath, caCert.Raw, caKey); err != nil {
			return out, err
		}
		out.Made = append(out.Made, out.CA, caKeyPath)
		_ = os.Remove(out.Files.Cert) // any server certificate left is not this CA's
	case err != nil:
		return out, err
	}
	srv, _, err := readPair(out.Files.Cert, out.Files.Key)
	if err == nil && covers(srv, hosts) && srv.NotAfter.Sub(now) > serverRenewal && srv.CheckSignatureFrom(caCert) == nil {
		return out, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return out, err
	}
	der, key, err := newServerCert(caCert, caKey, hosts, now)
	if err != nil {
		return out, err
	}
	if err := writePair(out.Files.Cert, out.Files.Key, der, key); err != nil {
		return out, err
	}
	out.Made = append(out.Made, out.Files.Cert, out.Files.Key)
	return out, nil
}

func checkIfExists(path string) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return CheckKeyFile(path)
}

// readPair reads a PEM certificate and its PEM EC private key; fs.ErrNotExist if either is
// missing.
func readPair(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		for _, p := range []string{certPath, keyPath} {
			if _, serr := os.Stat(p); errors.Is(serr, fs.ErrNotExist) {
				return nil, nil, serr
			}
		}
		return nil, nil, fmt.Errorf("tls: local CA files %s, %s: %w (remove both to make new ones)", certPath, keyPath, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("tls: %s is not an ECDSA key", keyPath)
	}
	return pair.Leaf, key, nil
}

func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	// The key first: a certificate is never on disk without its key.
	if err := sign.WriteFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return fmt.Errorf("tls: write %s: %w", keyPath, err)
	}
	if err := sign.WriteFileAtomic(certPath, PEMCert(der), 0o644); err != nil {
		return fmt.Errorf("tls: write %s: %w", certPath, err)
	}
	return nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func newCA(now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "telematics gateway local CA " + host, Organization: []string{"telematics (development)"}},
		NotBefore:             now.Add(-time.Hour), // a client whose clock is a little behind
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs leaf certificates only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func newServerCert(ca *x509.Certificate, caKey *ecdsa.PrivateKey, hosts []string, now time.Time) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: firstOr(hosts, "localhost")},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(serverValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	return der, key, err
}

// covers reports whether cert names every host of hosts.
func covers(cert *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
				return false
			}
		} else if h != "" && !slices.ContainsFunc(cert.DNSNames, func(n string) bool { return strings.EqualFold(n, h) }) {
			return false
		}
	}
	return true
}

func firstOr(s []string, def string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return def
}

// Hosts is DefaultHosts, then extra, then the host of each listener address of addrs that
// names one (not "", not 0.0.0.0 or ::), without repeats.
func Hosts(extra []string, addrs ...string) []string {
	var out []string
	add := func(h string) {
		h = strings.TrimSpace(h)
		if h != "" && !slices.ContainsFunc(out, func(o string) bool { return strings.EqualFold(o, h) }) {
			out = append(out, h)
		}
	}
	for _, h := range DefaultHosts {
		add(h)
	}
	for _, h := range extra {
		add(h)
	}
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			continue
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			continue
		}
		add(host)
	}
	return out
}
