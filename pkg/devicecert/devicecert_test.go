package devicecert

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"telematics/pkg/clock/clocktest"
	"telematics/pkg/tlsconf"
)

const (
	vinA = "WVWZZZ1JZXW000001"
	jti  = "kid1.0f8fad5b-d9cb-469f-a165-70867728950e"
)

func leaf(t *testing.T, iss Issued) []*x509.Certificate {
	t.Helper()
	pair, err := tls.X509KeyPair(iss.CertPEM, iss.KeyPEM)
	if err != nil {
		t.Fatalf("certificate and key do not pair: %v", err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{c}
}

func TestIssueAndVerify(t *testing.T) {
	clk := clocktest.New(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	dir := t.TempDir()
	ca, created, err := LoadOrCreate(dir, clk)
	if err != nil || !created {
		t.Fatalf("LoadOrCreate: created=%v %v", created, err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	iss, err := ca.Issue(vinA, jti, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain := leaf(t, iss)
	id, err := Verify(chain, ca.Pool(), clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	want := Identity{VIN: vinA, CredentialsID: jti, Serial: iss.Serial, NotAfter: iss.NotAfter}
	if !id.NotAfter.Equal(want.NotAfter) || id.VIN != want.VIN || id.CredentialsID != want.CredentialsID || id.Serial != want.Serial {
		t.Errorf("identity %+v, want %+v", id, want)
	}
	if c := chain[0]; len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ext key usage %v, want client auth only", c.ExtKeyUsage)
	}

	// Loaded again from the files: the same CA, and serials differ.
	again, created, err := LoadOrCreate(dir, clk)
	if err != nil || created {
		t.Fatalf("reload: created=%v %v", created, err)
	}
	if _, err := Verify(chain, again.Pool(), clk.Now()); err != nil {
		t.Errorf("reloaded CA does not verify its certificate: %v", err)
	}
	iss2, err := again.Issue(vinA, jti, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if iss2.Serial == iss.Serial {
		t.Error("two certificates with one serial")
	}
	pool, err := tlsconf.LoadPool(filepath.Join(dir, CertFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(chain, pool, clk.Now()); err != nil {
		t.Errorf("CA file does not verify: %v", err)
	}

	other, _, err := LoadOrCreate(t.TempDir(), clk)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		pool *x509.CertPool
		at   time.Time
	}{
		"another CA":     {other.Pool(), clk.Now()},
		"expired":        {ca.Pool(), iss.NotAfter.Add(time.Second)},
		"not valid yet":  {ca.Pool(), clk.Now().Add(-time.Hour)},
		"no trusted CAs": {nil, clk.Now()},
	} {
		if _, err := Verify(chain, c.pool, c.at); !errors.Is(err, ErrNotDeviceCert) {
			t.Errorf("%s: %v, want ErrNotDeviceCert", name, err)
		}
	}
}

func TestIssueBounds(t *testing.T) {
	ca, _, err := LoadOrCreate(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct{ vin, jti string }{
		"bad vin":      {"NOTAVIN", jti},
		"empty jti":    {vinA, ""},
		"jti with sep": {vinA, "a/b"},
		"long jti":     {vinA, strings.Repeat("a", 129)},
	} {
		if _, err := ca.Issue(c.vin, c.jti, time.Hour); err == nil {
			t.Errorf("%s: issued", name)
		}
	}
	iss, err := ca.Issue(vinA, jti, 100*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if life := time.Until(iss.NotAfter); life > MaxCertTTL {
		t.Errorf("certificate valid for %v, more than MaxCertTTL", life)
	}
}

func TestLoadRefuses(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := LoadOrCreate(dir, nil); err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, KeyFile)
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreate(dir, nil); !errors.Is(err, ErrKeyFileMode) {
		t.Errorf("key 0644: %v, want ErrKeyFileMode", err)
	}
	if err := os.Chmod(keyPath, 0o600); err != nil {
		t.Fatal(err)
	}

	// Another CA's certificate beside this key.
	otherDir := t.TempDir()
	if _, _, err := LoadOrCreate(otherDir, nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(otherDir, CertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CertFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreate(dir, nil); err == nil || !strings.Contains(err.Error(), "not for the key") {
		t.Errorf("mismatched certificate: %v", err)
	}

	// A key without its certificate is an error, not a new CA.
	if err := os.Remove(filepath.Join(dir, CertFile)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreate(dir, nil); err == nil {
		t.Error("key without certificate: loaded")
	}
}

// TestOpenSSLVerify: openssl, which nobody here wrote, takes the certificate as a TLS client
// certificate of the CA.
func TestOpenSSLVerify(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (Debian: apt-get install openssl)")
	}
	dir := t.TempDir()
	ca, _, err := LoadOrCreate(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.Issue(vinA, jti, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPath := filepath.Join(dir, "car.crt")
	if err := os.WriteFile(certPath, iss.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(dir, CertFile), "-purpose", "sslclient", certPath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Errorf("openssl verify: %v\n%s", err, out)
	}
	out, err = exec.Command("openssl", "verify", "-CAfile", filepath.Join(dir, CertFile), "-purpose", "sslserver", certPath).CombinedOutput()
	if err == nil && strings.Contains(string(out), ": OK") {
		t.Errorf("openssl takes a car certificate as a server certificate:\n%s", out)
	}
}
