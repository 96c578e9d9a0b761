package server

import (
	"fmt"
	"path/filepath"

	"telematics/pkg/devicecert"
	"telematics/pkg/sign"
)

// Files of the device CA in the data directory (package devicecert): the certificate a
// broker trusts for cars' client certificates, and its key (0600).
const (
	DeviceCAFile    = devicecert.CertFile
	DeviceCAKeyFile = devicecert.KeyFile
)

// loadDeviceCA reads the device CA from the data directory, or makes it on first start. It
// is not the CA of the gateway's TLS server certificate: it signs cars' client certificates
// only, so that a server certificate can never name a car. Its certificate (not its key) goes
// to the public directory too, for a standalone broker's --client-ca.
func (g *Gateway) loadDeviceCA() error {
	ca, created, err := devicecert.LoadOrCreate(g.cfg.Data, g.clock)
	if err != nil {
		return fmt.Errorf("device CA: %w", err)
	}
	if created {
		g.log.Info("created the device CA", "cert", filepath.Join(g.cfg.Data, DeviceCAFile))
	}
	g.deviceCA = ca
	if g.cfg.PublicDir != "" {
		if err := sign.WriteFileAtomic(filepath.Join(g.cfg.PublicDir, DeviceCAFile), ca.CertPEM(), 0o644); err != nil {
			return fmt.Errorf("write the device CA certificate to the public directory: %w", err)
		}
	}
	return nil
}

// trustDeviceCA makes the embedded broker admit cars by the certificates the device CA
// issued, once a TLS listener asks for them.
func (g *Gateway) trustDeviceCA() {
	if g.broker != nil && g.deviceCA != nil {
		g.broker.Auth().SetDeviceCAs(g.deviceCA.Pool())
	}
}
