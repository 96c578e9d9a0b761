package server_test

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
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/listeners"

	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/tlsconf"
)

// TestDeviceCertificateRetiredOnTheStandaloneBroker: behind a standalone broker that trusts
// the gateway's device CA (the file in its data directory), `reissue --cert` retires the
// car's old certificate there too: the gateway tells the broker the car's current token,
// which the certificates name.
func TestDeviceCertificateRetiredOnTheStandaloneBroker(t *testing.T) {
	t.Parallel()
	c := harness.MustStart(t, harness.Options{StandaloneBroker: true, PasswordParams: &cheap})
	pool, err := tlsconf.LoadPool(filepath.Join(c.Dir, server.DeviceCAFile))
	if err != nil {
		t.Fatal(err)
	}
	addr := addTLSListener(t, c, pool)
	adm := adminClient(c.G)
	ctx := context.Background()
	creds, err := adm.AddVehicles(ctx, api.AddVehiclesRequest{Count: 1, Cert: true})
	if err != nil {
		t.Fatal(err)
	}
	old := creds[0]
	if err := certConnect(addr, old); err != nil {
		t.Fatalf("the car's certificate on the standalone broker: %v", err)
	}
	fresh, err := adm.Reissue(ctx, old.VIN, api.ReissueRequest{Cert: true})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if certConnect(addr, old) == nil {
			return errors.New("the retired certificate is still admitted")
		}
		return nil
	})
	if err := certConnect(addr, fresh); err != nil {
		t.Fatalf("the reissued certificate: %v", err)
	}
}

// addTLSListener gives the cloud's standalone broker a TLS listener that asks for client
// certificates of pool, and its auth hook the same CA; it returns the listener's address.
func addTLSListener(t *testing.T, c *harness.Cloud, pool *x509.CertPool) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tls-test", Address: "127.0.0.1:0", TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		ClientAuth:   tls.VerifyClientCertIfGiven, ClientCAs: pool, MinVersion: tls.VersionTLS12,
	}})
	srv := c.Broker.Server()
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	srv.Listeners.Serve(l.ID(), srv.EstablishConnection) // on a goroutine of its own; Close stops it
	c.Broker.Auth().SetDeviceCAs(pool)
	return l.Address()
}

// certConnect connects car cr by its device certificate alone, and disconnects.
func certConnect(addr string, cr protocol.Credentials) error {
	pair, err := tls.X509KeyPair([]byte(cr.Cert), []byte(cr.CertKey))
	if err != nil {
		return err
	}
	cl := paho.NewClient(paho.NewClientOptions().AddBroker("tls://" + addr).SetClientID(cr.VIN).
		SetTLSConfig(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}}). // this test's server
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second))
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
