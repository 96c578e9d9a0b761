package server

import (
	"crypto/tls"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
)

// loadTLS loads the TLS listeners' certificates: the configured files, or the local CA's,
// made in the data directory on first start (and a server certificate made again when the
// listeners' hosts change). The CA certificate goes to the public directory too, for clients.
func (g *Gateway) loadTLS() error {
	t := g.cfg.TLS
	if !t.on() {
		return nil
	}
	files := tlsconf.Files{Cert: t.CertFile, Key: t.KeyFile, ClientCA: t.ClientCAFile}
	if files.ClientCA == "" && g.deviceCA != nil {
		// The listeners ask for the certificates the device CA issued to cars (requested, not
		// required): the embedded broker admits a car by one (devicecert.go).
		files.ClientCA = filepath.Join(g.cfg.Data, DeviceCAFile)
	}
	caFile := t.CAFile
	if t.CertFile == "" {
		hosts := tlsconf.Hosts(t.Hosts, t.MQTTAddr, t.WSAddr, t.HTTPAddr)
		// Real time, not the gateway's clock: clients check the validity on theirs.
		ca, err := tlsconf.EnsureLocalCA(g.cfg.Data, hosts, time.Now())
		if err != nil {
			return err
		}
		for _, f := range ca.Made {
			g.log.Info("made TLS file (local CA)", "file", f)
		}
		files.Cert, files.Key = ca.Files.Cert, ca.Files.Key
		if caFile == "" {
			caFile = ca.CA
		}
	}
	certs, err := tlsconf.Load(files)
	if err != nil {
		return err
	}
	g.certs = certs
	if caFile == "" {
		return nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("tls.ca_file: %w", err)
	}
	g.caFile, g.caPEM = caFile, string(pem)
	if g.cfg.PublicDir != "" {
		if err := sign.WriteFileAtomic(filepath.Join(g.cfg.PublicDir, tlsconf.CAFile), pem, 0o644); err != nil {
			return fmt.Errorf("write the CA certificate to the public directory: %w", err)
		}
	}
	return nil
}

// ReloadTLS reads the TLS certificate, key and client CA files again (SIGHUP): the next
// handshakes use them, established connections go on. On an error the old ones stay.
func (g *Gateway) ReloadTLS() error {
	if g.certs == nil {
		return nil
	}
	if err := g.certs.Reload(); err != nil {
		return err
	}
	g.log.Info("TLS certificates reloaded", "cert", g.certs.Files().Cert, "not_after", g.certs.Leaf().NotAfter)
	return nil
}

// externalBrokerTLS is the TLS configuration for an ssl:// or wss:// external broker: its CA
// file, else the gateway's own CA, else the system's roots. nil for a plain URL.
func (g *Gateway) externalBrokerTLS() (*tls.Config, error) {
	u, err := url.Parse(g.cfg.ExternalBroker)
	if err != nil || !tlsconf.SecureScheme(u.Scheme) {
		return nil, nil
	}
	ca := g.cfg.ExternalBrokerCAFile
	if ca == "" {
		ca = g.caFile
	}
	cfg, err := tlsconf.ClientConfig(ca)
	if err != nil {
		return nil, fmt.Errorf("external_broker_ca_file: %w", err)
	}
	return cfg, nil
}
