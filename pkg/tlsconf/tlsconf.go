// Package tlsconf is the project's transport security: the one server configuration every
// listener uses (TLS 1.2 at least, AEAD cipher suites only, certificates read from files and
// reloaded without dropping connections), the local certificate authority a gateway makes on
// its first start, the client side that trusts a given CA, and the rule that keeps plain text
// on loopback.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// MinVersion is the oldest protocol version a listener or a client accepts.
const MinVersion = tls.VersionTLS12

// CipherSuites are the TLS 1.2 suites offered: forward secrecy (ECDHE) and authenticated
// encryption (AES-GCM, ChaCha20-Poly1305) only, for ECDSA and RSA certificates. TLS 1.3's
// suites are all of this kind and not configurable.
var CipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// ErrKeyFileMode means a private key file may be read by other users of the machine; it is
// refused as the gateway's other secret files are.
var ErrKeyFileMode = errors.New("private key file readable by group or others")

// Files name a server's certificate chain, its private key and, optionally, the CA
// certificates whose client certificates it accepts, all PEM.
type Files struct {
	Cert     string
	Key      string
	ClientCA string
}

// Certs is a server's certificate and client CA pool, read from Files; Reload reads them
// again and every handshake after it uses the new ones, while established connections go on.
type Certs struct {
	files Files
	cur   atomic.Pointer[tls.Config]
}

// Load reads f. The key file must not be readable by group or others.
func Load(f Files) (*Certs, error) {
	c := &Certs{files: f}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// Files are the files c reads.
func (c *Certs) Files() Files { return c.files }

// Reload reads the files again. On an error the certificates in use stay.
func (c *Certs) Reload() error {
	cfg, err := load(c.files)
	if err != nil {
		return err
	}
	c.cur.Store(cfg)
	return nil
}

// Leaf is the server certificate in use.
func (c *Certs) Leaf() *x509.Certificate { return c.cur.Load().Certificates[0].Leaf }

// ClientCAs is the client CA pool in use (nil without Files.ClientCA): what a listener's
// handshakes verify client certificates against, for code that must trust the same CAs.
func (c *Certs) ClientCAs() *x509.CertPool { return c.cur.Load().ClientCAs }

// ServerConfig is the configuration of a listener: each handshake takes the certificates
// current at that moment (GetConfigForClient), so a Reload needs no new listener.
func (c *Certs) ServerConfig() *tls.Config {
	base := baseServer()
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return c.cur.Load(), nil }
	return base
}

func baseServer() *tls.Config {
	return &tls.Config{MinVersion: MinVersion, CipherSuites: CipherSuites}
}

func load(f Files) (*tls.Config, error) {
	if f.Cert == "" || f.Key == "" {
		return nil, errors.New("tls: both a certificate file and a key file are needed")
	}
	if err := CheckKeyFile(f.Key); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: load certificate %s with key %s: %w", f.Cert, f.Key, err)
	}
	cfg := baseServer()
	cfg.Certificates = []tls.Certificate{cert}
	if f.ClientCA != "" {
		pool, err := LoadPool(f.ClientCA)
		if err != nil {
			return nil, err
		}
		// Requested, not required: a car may present a device certificate, everyone else
		// authenticates with a token inside MQTT or HTTP.
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// CheckKeyFile refuses a private key file that group or others may access.
func CheckKeyFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("tls: key file: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %v; run `chmod 600 %s`", ErrKeyFileMode, path, perm, path)
	}
	return nil
}

// LoadPool reads the PEM certificates of path into a pool; a file without one is an error.
func LoadPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls: read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls: CA file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// ClientConfig trusts the CA certificates of caFile (PEM) alone; with caFile "" the system's
// roots. The server's name is checked against its certificate as usual.
func ClientConfig(caFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: MinVersion, CipherSuites: CipherSuites}
	if caFile != "" {
		pool, err := LoadPool(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// ClientConfigPEM is ClientConfig for CA certificates held in memory (the ca_pem of a car's
// credentials).
func ClientConfigPEM(caPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("tls: no PEM certificate in the CA given")
	}
	return &tls.Config{MinVersion: MinVersion, CipherSuites: CipherSuites, RootCAs: pool}, nil
}

// SecureScheme reports whether a URL scheme is one of TLS: ssl, tls, mqtts, wss, https.
func SecureScheme(scheme string) bool {
	switch strings.ToLower(scheme) {
	case "ssl", "tls", "mqtts", "wss", "https":
		return true
	}
	return false
}

// ErrPlaintext means a plain-text listener was configured on an address that leaves the
// machine without allow_plaintext.
var ErrPlaintext = errors.New("plain-text listener on a non-loopback address")

// CheckPlaintext refuses a plain-text listener at addr (HOST:PORT; "" is off) that is not on
// loopback, unless allow. key names the setting in the error.
func CheckPlaintext(key, addr string, allow bool) error {
	if addr == "" || allow || Loopback(addr) {
		return nil
	}
	return fmt.Errorf("%s: %w: %s would carry tokens and passwords readable by anyone on the path; "+
		"use the TLS listener instead (set %s to off or to a 127.0.0.1 address), or set allow_plaintext: true "+
		"if a TLS-terminating proxy or a private network protects it", key, ErrPlaintext, addr, key)
}

// Loopback reports whether the host of addr is localhost or a loopback IP. An empty or
// unspecified host (":1883", "0.0.0.0:1883") listens on every interface: not loopback.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// PEMCert encodes a certificate's DER as PEM.
func PEMCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// HTTPClient is an HTTP client bounded by timeout whose https:// requests trust the CA
// certificates of caFile alone (the system's roots when caFile is "").
func HTTPClient(caFile string, timeout time.Duration) (*http.Client, error) {
	if caFile == "" {
		return &http.Client{Timeout: timeout}, nil
	}
	cfg, err := ClientConfig(caFile)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return &http.Client{Timeout: timeout, Transport: tr}, nil
}
