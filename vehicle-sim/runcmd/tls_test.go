package runcmd

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/tlsconf"
	"telematics/pkg/vehicle/carstore"
	"telematics/vehicle-sim/config"
)

// Provisioning over HTTPS verifies the gateway with --ca; without it the error says to pass
// --ca.
func TestProvisionOverHTTPS(t *testing.T) {
	g, plain := newFakeGateway(t) // its credentials; served here over TLS
	plain.Close()
	srv := httptest.NewTLSServer(http.HandlerFunc(g.serve))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, tlsconf.PEMCert(srv.Certificate().Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "admin.token")
	os.WriteFile(tokenFile, []byte(g.token+"\n"), 0o600)
	cfg := config.Default()
	cfg.Gateway, cfg.TokenFile, cfg.DataDir, cfg.Run.Cars = srv.URL, tokenFile, dir, 2

	provision := func(cfg config.Config) error {
		st, err := carstore.Open(filepath.Join(dir, carstore.File))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		_, err = provisioned(context.Background(), st, cfg, Options{})
		return err
	}
	if err := provision(cfg); err == nil || !strings.Contains(err.Error(), "--ca") {
		t.Fatalf("without --ca: %v, want a certificate error naming --ca", err)
	}
	cfg.CA = ca
	if err := provision(cfg); err != nil {
		t.Fatal(err)
	}
}

// The cars trust --ca, else the ca_pem of their credentials, for an ssl:// broker only.
func TestBrokerTLSConfig(t *testing.T) {
	local, err := tlsconf.EnsureLocalCA(t.TempDir(), tlsconf.DefaultHosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(local.CA)
	creds := []protocol.Credentials{{VIN: vinN(1), CAPEM: string(pem)}}
	cfg := config.Default()
	if c, err := brokerTLS(cfg, creds); c != nil || err != nil {
		t.Errorf("tcp:// broker: %v %v, want no TLS", c, err)
	}
	cfg.Broker = "ssl://127.0.0.1:8883"
	if c, err := brokerTLS(cfg, creds); err != nil || c == nil || c.RootCAs == nil {
		t.Errorf("ssl:// with ca_pem: %v %v", c, err)
	}
	cfg.CA = filepath.Join(t.TempDir(), "missing.pem")
	if _, err := brokerTLS(cfg, creds); err == nil {
		t.Error("a missing --ca file was not an error")
	}
}
