package admin_test

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"telematics/pkg/protocol"
)

// vehicle add --cert and reissue --cert: the certificate and key printed, or written to
// --cert-dir (the key 0600) beside the device CA; --json carries them for vehicle-sim.
func TestVehicleCertificates(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	out := g.ok("", "vehicle", "add", vinA, "--cert")
	for _, want := range []string{"vin=" + vinA, "token=", "cert=\n-----BEGIN CERTIFICATE-----", "key=\n-----BEGIN PRIVATE KEY-----"} {
		if !strings.Contains(out, want) {
			t.Errorf("vehicle add --cert lacks %q:\n%s", want, out)
		}
	}

	dir := filepath.Join(t.TempDir(), "certs")
	out = g.ok("", "vehicle", "add", vinB, "--cert", "--cert-dir", dir)
	crt, key, ca := filepath.Join(dir, vinB+".crt"), filepath.Join(dir, vinB+".key"), filepath.Join(dir, "device-ca.crt")
	if !strings.Contains(out, "cert="+crt+" key="+key+" device_ca="+ca+"\n") || strings.Contains(out, "BEGIN") {
		t.Errorf("vehicle add --cert --cert-dir:\n%s", out)
	}
	if _, err := tls.LoadX509KeyPair(crt, key); err != nil {
		t.Errorf("written certificate and key: %v", err)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v %v", fi, err)
	}
	if b, err := os.ReadFile(ca); err != nil || !strings.Contains(string(b), "BEGIN CERTIFICATE") {
		t.Errorf("device CA file: %v", err)
	}
	if out := g.ok("", "vehicle", "show", vinB); !strings.Contains(out, "device certificate") {
		t.Errorf("vehicle show does not name the certificate:\n%s", out)
	}

	var creds []protocol.Credentials
	decode(t, g.ok("", "vehicle", "reissue", vinB, "--cert", "--json"), &creds)
	if len(creds) != 1 || creds[0].Cert == "" || creds[0].CertKey == "" || creds[0].DeviceCA == "" {
		t.Fatalf("reissue --cert --json: %+v", creds)
	}
	if r := g.run("", "vehicle", "reissue", vinB, "--cert-dir", dir); r.code != 2 || !strings.Contains(r.stderr, "--cert-dir needs --cert") {
		t.Errorf("--cert-dir without --cert: %+v", r)
	}
}
