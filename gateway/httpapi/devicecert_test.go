package httpapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"

	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/devicecert"
	"telematics/pkg/protocol"
)

// checkCert checks that cr carries a device certificate of ca for its car, naming the id of
// the token beside it, with the key made for it; it returns the certificate's serial.
func checkCert(t *testing.T, f *fixture, ca *devicecert.CA, cr protocol.Credentials) string {
	t.Helper()
	if cr.DeviceCA != string(ca.CertPEM()) {
		t.Fatalf("%s: credentials name another device CA", cr.VIN)
	}
	pair, err := tls.X509KeyPair([]byte(cr.Cert), []byte(cr.CertKey))
	if err != nil {
		t.Fatalf("%s: certificate and key: %v", cr.VIN, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	id, err := devicecert.Verify([]*x509.Certificate{leaf}, ca.Pool(), f.clock.Now())
	if err != nil {
		t.Fatalf("%s: %v", cr.VIN, err)
	}
	claims, err := f.api.Verifier.Verify(cr.Token)
	if err != nil {
		t.Fatal(err)
	}
	if id.VIN != cr.VIN || id.CredentialsID != claims.ID {
		t.Fatalf("certificate names %s with token id %s; the credentials are %s's with token id %s", id.VIN, id.CredentialsID, cr.VIN, claims.ID)
	}
	return id.Serial
}

func TestDeviceCertificates(t *testing.T) {
	t.Parallel()
	var ca *devicecert.CA
	dir := t.TempDir()
	f := newFixture(t, func(a *API, _ *twofa.Policy) {
		var err error
		if ca, _, err = devicecert.LoadOrCreate(dir, a.Clock); err != nil {
			t.Fatal(err)
		}
		a.DeviceCA = ca
	})
	ctx := context.Background()
	creds, err := f.admin.AddVehicles(ctx, api.AddVehiclesRequest{VINs: []string{vinA}, Count: 1, Cert: true})
	if err != nil || len(creds) != 2 {
		t.Fatalf("add --cert: %v", err)
	}
	for _, cr := range creds {
		serial := checkCert(t, f, ca, cr)
		if v, _ := f.admin.Vehicle(ctx, cr.VIN); v.CertSerial != serial {
			t.Errorf("%s: view's cert serial %q, want %q", cr.VIN, v.CertSerial, serial)
		}
	}
	if plain := f.addVehicles(vinB)[0]; plain.Cert != "" || plain.CertKey != "" || plain.DeviceCA != "" {
		t.Errorf("add without --cert gave a certificate")
	}

	cr, err := f.admin.Reissue(ctx, vinA, api.ReissueRequest{Cert: true})
	if err != nil {
		t.Fatal(err)
	}
	serial := checkCert(t, f, ca, cr)
	v, _ := f.admin.Vehicle(ctx, vinA)
	f.mu.Lock()
	told := f.retired[vinA]
	f.mu.Unlock()
	if v.CertSerial != serial || told != v.TokenID {
		t.Errorf("after reissue --cert: view %+v, serial %s, broker told %q", v, serial, told)
	}
	if cr, err := f.admin.ReissueCredentials(ctx, vinA); err != nil || cr.Cert != "" {
		t.Fatalf("reissue without --cert: %v, certificate %q", err, cr.Cert)
	}
	if v, _ := f.admin.Vehicle(ctx, vinA); v.CertSerial != "" {
		t.Errorf("cert serial %q after a reissue without a certificate", v.CertSerial)
	}
}

// A gateway without a device CA refuses to issue certificates, and says why.
func TestDeviceCertificatesWithoutCA(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	_, err := f.admin.AddVehicles(ctx, api.AddVehiclesRequest{VINs: []string{vinA}, Cert: true})
	wantError(t, err, 400, protocol.ReasonBadRequest)
	f.addVehicles(vinA)
	_, err = f.admin.Reissue(ctx, vinA, api.ReissueRequest{Cert: true})
	wantError(t, err, 400, protocol.ReasonBadRequest)
	if _, err := f.admin.Vehicle(ctx, vinA); err != nil {
		t.Fatal(err)
	}
}
