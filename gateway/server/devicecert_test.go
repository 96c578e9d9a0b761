package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/listeners"

	"telematics/gateway/accounts"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// startForCerts runs a gateway on dir with its embedded broker and, beside its plain
// listener, a TLS listener this test makes (the gateway's own TLS listeners are configured
// elsewhere): it asks for client certificates of the device CA, as a deployment does.
func startForCerts(t *testing.T, dir string) (*Gateway, string) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Data = dir
	cfg.MQTTAddr, cfg.WSAddr, cfg.HTTPAddr = "127.0.0.1:0", "", "127.0.0.1:0"
	// Not the default ports 8883/8884/8443, which another gateway on the machine may hold.
	cfg.TLS.MQTTAddr, cfg.TLS.WSAddr, cfg.TLS.HTTPAddr = "127.0.0.1:0", "", "127.0.0.1:0"
	g, err := Start(context.Background(), cfg, Options{PasswordParams: &accounts.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	tlsCfg := &tls.Config{
		Certificates: []tls.Certificate{testServerCert(t)},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    g.deviceCA.Pool(),
		MinVersion:   tls.VersionTLS12,
	}
	l := listeners.NewTCP(listeners.Config{ID: "tls-test", Address: "127.0.0.1:0", TLSConfig: tlsCfg})
	srv := g.broker.Server()
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	srv.Listeners.Serve(l.ID(), srv.EstablishConnection) // on a goroutine of its own; Close stops it
	return g, l.Address()
}

func testServerCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// connectWithCert connects car cr by its device certificate alone (no username, no token).
func connectWithCert(addr string, cr protocol.Credentials) error {
	pair, err := tls.X509KeyPair([]byte(cr.Cert), []byte(cr.CertKey))
	if err != nil {
		return err
	}
	opts := paho.NewClientOptions().AddBroker("tls://" + addr).SetClientID(cr.VIN).
		SetTLSConfig(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}}). // the server is this test's
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second)
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	cl.Disconnect(50)
	return nil
}

// TestDeviceCertificatesOnTheEmbeddedBroker: `vehicle add --cert` gives a car a certificate
// the embedded broker admits it with; `reissue --cert` retires it (the new one works), and
// the retirement holds after a gateway restart.
func TestDeviceCertificatesOnTheEmbeddedBroker(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g, addr := startForCerts(t, dir)
	adm := api.NewClient(g.HTTPURL(), g.AdminToken())
	ctx := context.Background()
	creds, err := adm.AddVehicles(ctx, api.AddVehiclesRequest{Count: 1, Cert: true})
	if err != nil {
		t.Fatal(err)
	}
	old := creds[0]
	if old.Cert == "" || old.CertKey == "" || old.DeviceCA == "" || old.Token == "" {
		t.Fatalf("credentials without certificate, key, CA or token: %+v", old)
	}
	caFile, err := os.ReadFile(filepath.Join(dir, DeviceCAFile))
	if err != nil || string(caFile) != old.DeviceCA {
		t.Fatalf("the credentials' CA is not %s: %v", DeviceCAFile, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, DeviceCAKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("device CA key: %v %v", fi, err)
	}
	if err := connectWithCert(addr, old); err != nil {
		t.Fatalf("the new car's certificate: %v", err)
	}
	v, err := adm.Vehicle(ctx, old.VIN)
	if err != nil || v.CertSerial == "" {
		t.Fatalf("vehicle view without the certificate's serial: %+v %v", v, err)
	}

	fresh, err := adm.Reissue(ctx, old.VIN, api.ReissueRequest{Cert: true})
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Cert == "" || fresh.Cert == old.Cert {
		t.Fatal("reissue --cert gave no new certificate")
	}
	if err := connectWithCert(addr, old); err == nil {
		t.Fatal("the retired certificate is admitted")
	}
	if err := connectWithCert(addr, fresh); err != nil {
		t.Fatalf("the reissued certificate: %v", err)
	}
	if v2, _ := adm.Vehicle(ctx, old.VIN); v2.CertSerial == v.CertSerial || v2.CertSerial == "" {
		t.Errorf("cert serial after the reissue: %q (was %q)", v2.CertSerial, v.CertSerial)
	}

	// A reissue without --cert retires the certificate too.
	if _, err := adm.ReissueCredentials(ctx, old.VIN); err != nil {
		t.Fatal(err)
	}
	if err := connectWithCert(addr, fresh); err == nil {
		t.Fatal("a certificate is admitted after a reissue without --cert")
	}
	if v3, _ := adm.Vehicle(ctx, old.VIN); v3.CertSerial != "" {
		t.Errorf("cert serial %q after a reissue without a certificate", v3.CertSerial)
	}
	last, err := adm.Reissue(ctx, old.VIN, api.ReissueRequest{Cert: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}

	// Restarted on the same data directory: the same CA, the same retirements.
	g, addr = startForCerts(t, dir)
	for _, c := range []protocol.Credentials{old, fresh} {
		if err := connectWithCert(addr, c); err == nil {
			t.Error("after a restart, a retired certificate is admitted")
		}
	}
	if err := connectWithCert(addr, last); err != nil {
		t.Errorf("after a restart, the current certificate: %v", err)
	}
}
