package admin

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"telematics/pkg/cmdline"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// certFlags are the device certificate options of `vehicle add` and `vehicle reissue`.
type certFlags struct {
	cert bool
	dir  string
}

func (f *certFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.cert, "cert", false, "also issue each car a device certificate (X.509, its VIN as identity, signed by the gateway's device CA) for mutual TLS")
	cmd.Flags().StringVar(&f.dir, "cert-dir", "", "with --cert: write VIN.crt, VIN.key (0600) and device-ca.crt to `DIR` instead of printing them")
	cmdline.NoEnv(cmd, "cert")
	cmdline.NoEnv(cmd, "cert-dir")
}

func (f *certFlags) check() error {
	if f.dir != "" && !f.cert {
		return cmdline.UsageError("--cert-dir needs --cert")
	}
	return nil
}

// output writes the certificates in creds to the directory, if one was named; then it prints
// where they are, or (no directory, text output) the PEM blocks themselves.
func (f *certFlags) output(w io.Writer, cr protocol.Credentials) error {
	if cr.Cert == "" {
		return nil
	}
	if f.dir == "" {
		fmt.Fprintf(w, "cert=\n%skey=\n%s", cr.Cert, cr.CertKey)
		return nil
	}
	paths, err := writeCertFiles(f.dir, cr)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "cert=%s key=%s device_ca=%s\n", paths[0], paths[1], paths[2])
	return nil
}

// writeCertFiles writes a car's certificate, its key (0600) and the device CA certificate to
// dir, and returns their paths.
func writeCertFiles(dir string, cr protocol.Credentials) ([3]string, error) {
	if !protocol.ValidVIN(cr.VIN) { // the name of a file: never a path from the server's answer
		return [3]string{}, fmt.Errorf("the gateway answered with %q, not a VIN: no certificate written", cr.VIN)
	}
	p := [3]string{filepath.Join(dir, cr.VIN+".crt"), filepath.Join(dir, cr.VIN+".key"), filepath.Join(dir, "device-ca.crt")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, err
	}
	for i, c := range []struct {
		data string
		mode os.FileMode
	}{{cr.Cert, 0o644}, {cr.CertKey, 0o600}, {cr.DeviceCA, 0o644}} {
		if err := sign.WriteFileAtomic(p[i], []byte(c.data), c.mode); err != nil {
			return p, err
		}
	}
	return p, nil
}

// writeCertFilesIf writes cr's certificate files to dir when both are there (--json with
// --cert-dir: the JSON still carries them).
func writeCertFilesIf(dir string, cr protocol.Credentials) ([3]string, error) {
	if dir == "" || cr.Cert == "" {
		return [3]string{}, nil
	}
	return writeCertFiles(dir, cr)
}
