// Package devicecert is the gateway's device certificate authority and the check a broker
// makes of the certificate a car presents over mutual TLS. The CA (ECDSA P-256, kept in the
// gateway's data directory, apart from the server certificate's CA) issues each car an X.509
// client certificate naming its VIN and the credentials (token id) it was issued with, so
// that retiring a car's token retires its certificate too, on every broker that follows the
// gateway's token retirements.
package devicecert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"telematics/pkg/clock"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
)

// Files in the gateway's data directory.
const (
	CertFile = "device-ca.crt" // the CA certificate, PEM: what a broker trusts for cars
	KeyFile  = "device-ca.key" // its private key, PEM, 0600
)

// Validity of what the CA signs.
const (
	caValidity = 20 * 365 * 24 * time.Hour
	// MaxCertTTL bounds a car certificate's lifetime whatever the caller asks.
	MaxCertTTL = 5 * 365 * 24 * time.Hour
	// backdate covers a car whose clock is a little behind the gateway's.
	backdate = 5 * time.Minute
)

// URIs a car certificate carries as subject alternative names.
const (
	vehicleURIPrefix     = "urn:telematics:vehicle:"     // + VIN
	credentialsURIPrefix = "urn:telematics:credentials:" // + the token id it was issued with
)

var (
	// ErrKeyFileMode means the CA's key file may be read by other users of the machine:
	// whoever reads it can make certificates for any car. It is tlsconf's, whose check Load
	// uses.
	ErrKeyFileMode = tlsconf.ErrKeyFileMode
	// ErrNotDeviceCert means a certificate is not a car certificate of this CA: not signed by
	// it, expired, not for client authentication, or without a valid VIN.
	ErrNotDeviceCert = errors.New("not a device certificate of this gateway")
)

// CA is the device certificate authority.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
	clock   clock.Clock
}

// LoadOrCreate reads the CA from dir (CertFile, KeyFile) or, when neither exists, makes one
// and writes both (the key 0600). The key file must not be readable by group or others
// (ErrKeyFileMode), and the key must be the certificate's. created reports a new CA.
func LoadOrCreate(dir string, clk clock.Clock) (ca *CA, created bool, err error) {
	clk = clock.Or(clk)
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	if errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist) {
		ca, err := create(certPath, keyPath, clk)
		return ca, err == nil, err
	}
	ca, err = Load(certPath, keyPath, clk)
	return ca, false, err
}

// Load reads an existing CA: the certificate and its key (checked to be 0600 or stricter).
func Load(certPath, keyPath string, clk clock.Clock) (*CA, error) {
	if err := tlsconf.CheckKeyFile(keyPath); err != nil {
		return nil, fmt.Errorf("device CA key: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("device CA key: %w", err)
	}
	blk, _ := pem.Decode(keyPEM)
	if blk == nil || blk.Type != "EC PRIVATE KEY" {
		return nil, fmt.Errorf("device CA key %q: no PEM EC PRIVATE KEY block", keyPath)
	}
	key, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("device CA key %q: %w", keyPath, err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("device CA certificate: %w", err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("device CA certificate %q: %w", certPath, err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("device CA certificate %q is not for the key in %q", certPath, keyPath)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("device CA certificate %q is not a CA certificate", certPath)
	}
	return &CA{cert: cert, certPEM: certPEM, key: key, clock: clock.Or(clk)}, nil
}

func create(certPath, keyPath string, clk clock.Clock) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("make device CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := clk.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "telematics device CA " + sign.KeyID(&key.PublicKey), Organization: []string{"telematics"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs car certificates only, no intermediate CA
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("make device CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	// The key first: a crash between the two writes leaves a key without a certificate,
	// which Load reports, never a certificate whose key is lost.
	if err := sign.WriteFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := sign.WriteFileAtomic(certPath, certPEM, 0o644); err != nil {
		return nil, err
	}
	return &CA{cert: cert, certPEM: certPEM, key: key, clock: clk}, nil
}

// CertPEM is the CA certificate (PEM): the file a broker trusts for car certificates.
func (ca *CA) CertPEM() []byte { return append([]byte(nil), ca.certPEM...) }

// Pool is a pool holding the CA certificate alone.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Issued is a car certificate and the private key made for it.
type Issued struct {
	CertPEM []byte // the car's certificate
	KeyPEM  []byte // its private key (PKCS #8): a secret, for the car alone
	Serial  string // the certificate's serial number, hex
	// NotAfter is when the certificate expires.
	NotAfter time.Time
}

// Issue makes a key pair for car vin and a client certificate for it, valid for ttl (at most
// MaxCertTTL, and never beyond the CA's own expiry), naming credentialsID: the id (jti) of
// the token issued with it. A broker admits the certificate as long as that token id is the
// car's current one, so a reissue or a decommission retires both together.
func (ca *CA) Issue(vin, credentialsID string, ttl time.Duration) (Issued, error) {
	if !protocol.ValidVIN(vin) {
		return Issued{}, fmt.Errorf("device certificate: %q is not a VIN", vin)
	}
	if credentialsID == "" || strings.ContainsAny(credentialsID, " /?#%") || len(credentialsID) > 128 {
		return Issued{}, fmt.Errorf("device certificate: bad credentials id %q", credentialsID)
	}
	if ttl <= 0 || ttl > MaxCertTTL {
		ttl = MaxCertTTL
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Issued{}, fmt.Errorf("make a car key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return Issued{}, err
	}
	now := ca.clock.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	vehicleURI, err := url.Parse(vehicleURIPrefix + vin)
	if err != nil {
		return Issued{}, err
	}
	credsURI, err := url.Parse(credentialsURIPrefix + credentialsID)
	if err != nil {
		return Issued{}, fmt.Errorf("device certificate: bad credentials id %q: %w", credentialsID, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: vin, Organization: []string{"telematics vehicle"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{vehicleURI, credsURI},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Issued{}, fmt.Errorf("sign the car certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Issued{}, err
	}
	return Issued{
		CertPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		Serial:   SerialHex(serial),
		NotAfter: notAfter,
	}, nil
}

// Identity is who a verified car certificate names.
type Identity struct {
	VIN string
	// CredentialsID is the id of the token the certificate was issued with.
	CredentialsID string
	Serial        string // hex
	NotAfter      time.Time
}

// Verify checks the chain a client presented (leaf first) against roots at time now, for
// client authentication, and returns the car it names. Any failure is ErrNotDeviceCert, with
// the detail for the log.
func Verify(chain []*x509.Certificate, roots *x509.CertPool, now time.Time) (Identity, error) {
	if len(chain) == 0 || roots == nil {
		return Identity{}, fmt.Errorf("%w: no certificate", ErrNotDeviceCert)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrNotDeviceCert, err)
	}
	return identityOf(chain[0])
}

// identityOf reads the car a certificate names: CN and the vehicle URI must be the same valid
// VIN, and there must be exactly one credentials URI.
func identityOf(c *x509.Certificate) (Identity, error) {
	var vins, creds []string
	for _, u := range c.URIs {
		s := u.String()
		switch {
		case strings.HasPrefix(s, vehicleURIPrefix):
			vins = append(vins, strings.TrimPrefix(s, vehicleURIPrefix))
		case strings.HasPrefix(s, credentialsURIPrefix):
			creds = append(creds, strings.TrimPrefix(s, credentialsURIPrefix))
		}
	}
	vin := c.Subject.CommonName
	if len(vins) != 1 || vins[0] != vin || !protocol.ValidVIN(vin) {
		return Identity{}, fmt.Errorf("%w: no single valid VIN (common name and %s URI)", ErrNotDeviceCert, vehicleURIPrefix)
	}
	if len(creds) != 1 || creds[0] == "" {
		return Identity{}, fmt.Errorf("%w: no single %s URI", ErrNotDeviceCert, credentialsURIPrefix)
	}
	return Identity{VIN: vin, CredentialsID: creds[0], Serial: SerialHex(c.SerialNumber), NotAfter: c.NotAfter}, nil
}

// SerialHex is how serial numbers are written: lower-case hex, as openssl prints them without
// the colons.
func SerialHex(n *big.Int) string { return fmt.Sprintf("%x", n) }

// randomSerial is a positive 127-bit random number (RFC 5280 allows 20 octets; random
// serials keep a certificate's contents unpredictable to whoever asks for one).
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("make a serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(blk.Bytes)
}
