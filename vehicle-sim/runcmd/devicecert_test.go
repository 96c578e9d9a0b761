package runcmd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"

	"telematics/internal/testutil"
	"telematics/pkg/broker"
	"telematics/pkg/devicecert"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/vehicle-sim/config"
)

// tlsBroker is a broker with a TLS listener that asks for device certificates of ca, and the
// pool its server certificate verifies with.
func tlsBroker(t *testing.T, gw *sign.Signer, ca *devicecert.CA) (*broker.Broker, string, *x509.CertPool) {
	t.Helper()
	cfg := broker.DefaultConfig()
	cfg.MQTTAddr, cfg.WSAddr = "off", "off"
	b, err := broker.New(cfg, []*ecdsa.PublicKey{gw.Public()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	l := listeners.NewTCP(listeners.Config{ID: "tls", Address: "127.0.0.1:0", TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		ClientAuth:   tls.VerifyClientCertIfGiven, ClientCAs: ca.Pool(), MinVersion: tls.VersionTLS12,
	}})
	if err := b.Server().AddListener(l); err != nil {
		t.Fatal(err)
	}
	b.Auth().SetDeviceCAs(ca.Pool())
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	return b, l.Address(), roots
}

// `vehicle-sim run` over TLS with a device certificate, from the credentials file or from
// --cert/--key: the car is admitted by its certificate alone (its token here is worthless).
func TestRunWithDeviceCertificate(t *testing.T) {
	t.Parallel()
	gw, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ca, _, err := devicecert.LoadOrCreate(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := sign.EncodePublic(gw.Public())
	for _, viaFlags := range []bool{false, true} {
		name := map[bool]string{false: "credentials file", true: "--cert and --key"}[viaFlags]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b, addr, roots := tlsBroker(t, gw, ca)
			vin := vinN(1)
			if viaFlags {
				vin = vinN(2)
			}
			iss, err := ca.Issue(vin, "kid.current", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			cred := protocol.Credentials{VIN: vin, ClientID: vin, Username: vin, Token: "not-a-token", GatewayKey: pub}
			cfg := config.Default()
			cfg.DataDir, cfg.LinkAddr, cfg.Broker = dir, "off", "tls://"+addr
			if viaFlags {
				cfg.Run.Cert, cfg.Run.Key = filepath.Join(dir, "car.crt"), filepath.Join(dir, "car.key")
				os.WriteFile(cfg.Run.Cert, iss.CertPEM, 0o644)
				os.WriteFile(cfg.Run.Key, iss.KeyPEM, 0o600)
			} else {
				cred.Cert, cred.CertKey, cred.DeviceCA = string(iss.CertPEM), string(iss.KeyPEM), string(ca.CertPEM())
			}
			cfg.Run.Fleet = filepath.Join(dir, "fleet.json")
			raw, _ := json.Marshal([]protocol.Credentials{cred})
			os.WriteFile(cfg.Run.Fleet, raw, 0o600)

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- Run(ctx, cfg, Options{Logger: slog.New(slog.DiscardHandler), Progress: io.Discard,
					// The broker's server certificate is this test's: trust it, as --ca will.
					Dial: func(ctx context.Context, o mqttc.Options) (mqttc.Client, error) {
						o.TLS = o.TLS.Clone()
						o.TLS.RootCAs = roots
						c, err := mqttc.Dial(ctx, o)
						if err != nil {
							return nil, err // not a nil *Paho in a non-nil Client
						}
						return c, nil
					}})
			}()
			testutil.Eventually(t, 20*time.Second, func() error {
				cl, ok := b.Server().Clients.Get(vin)
				if !ok || cl.Closed() {
					return errors.New("the car is not connected")
				}
				if id, ok := b.Auth().Identity(cl); !ok || id.CertSerial != iss.Serial {
					return errors.New("the car is not admitted by its certificate")
				}
				return nil
			})
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Fatalf("run: %v", err)
			}
		})
	}
}

func TestCertFilesRefused(t *testing.T) {
	t.Parallel()
	ca, _, err := devicecert.LoadOrCreate(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	iss, _ := ca.Issue(vinN(3), "kid.x", time.Hour)
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	os.WriteFile(crt, iss.CertPEM, 0o644)
	os.WriteFile(key, iss.KeyPEM, 0o644)
	creds := []protocol.Credentials{{VIN: vinN(3)}}
	if _, err := withCertFiles(creds, crt, key); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("key readable by others: %v", err)
	}
	os.Chmod(key, 0o600)
	if _, err := withCertFiles([]protocol.Credentials{{VIN: vinN(4)}}, crt, key); err == nil || !strings.Contains(err.Error(), "not a car of this fleet") {
		t.Errorf("another car's certificate: %v", err)
	}
	out, err := withCertFiles(creds, crt, key)
	if err != nil || out[0].Cert == "" || creds[0].Cert != "" {
		t.Errorf("withCertFiles: %v (the caller's slice must stay as it was)", err)
	}
}
