package phone

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCreateKeyWritesPrivateHalf0600(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "phone.key") // the directory is made too
	k, err := CreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", perm)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("key directory mode %04o, want 0700", di.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if !bytes.HasPrefix(b, []byte("-----BEGIN EC PRIVATE KEY-----")) {
		t.Fatalf("key file is not a PEM EC private key: %.40q", b)
	}
	loaded, err := LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.KID() != k.KID() || !loaded.Private().Equal(k.Private()) {
		t.Fatal("LoadKey read another key than CreateKey wrote")
	}
	// No temporary file is left beside it.
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Fatalf("directory holds %d entries, want only the key", len(ents))
	}
}

func TestCreateKeyRefusesToOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "phone.key")
	k, err := CreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	if _, err := CreateKey(path); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second CreateKey: %v, want ErrKeyExists", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("the refused CreateKey changed the key file")
	}
	k2, err := ReplaceKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k2.KID() == k.KID() {
		t.Fatal("ReplaceKey kept the old key")
	}
	if loaded, err := LoadKey(path); err != nil || loaded.KID() != k2.KID() {
		t.Fatalf("after ReplaceKey: %v, %v", loaded, err)
	}
}

func TestLoadKeyModes(t *testing.T) {
	tests := []struct {
		name string
		mode os.FileMode
		ok   bool
	}{
		{"owner read-write", 0o600, true},
		{"owner read-only", 0o400, true},
		{"world readable", 0o644, false},
		{"group readable", 0o640, false},
		{"others readable", 0o604, false},
		{"group writable", 0o620, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "phone.key")
			if _, err := CreateKey(path); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadKey(path)
			if tc.ok {
				if err != nil {
					t.Fatalf("mode %04o refused: %v", tc.mode, err)
				}
				return
			}
			if !errors.Is(err, ErrKeyExposed) {
				t.Fatalf("mode %04o: %v, want ErrKeyExposed", tc.mode, err)
			}
			// The message says what is wrong and what to do.
			if !strings.Contains(err.Error(), "chmod 600 "+path) || !strings.Contains(err.Error(), "readable by you only") {
				t.Fatalf("unhelpful message: %v", err)
			}
		})
	}
}

func TestLoadKeyErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, err := LoadKey(filepath.Join(dir, "none")); !errors.Is(err, ErrNoKey) {
		t.Fatalf("missing file: %v, want ErrNoKey", err)
	}
	if _, err := LoadKey(write("garbage", []byte("not a key"))); err == nil {
		t.Fatal("garbage accepted")
	}
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}})
	if _, err := LoadKey(write("public", pub)); err == nil || !strings.Contains(err.Error(), "not a private key") {
		t.Fatalf("public key file: %v", err)
	}
	if _, err := LoadKey(dir); err == nil {
		t.Fatal("a directory accepted as key")
	}
	// PKCS#8, as `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes it.
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	k, err := LoadKey(write("pkcs8", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	if err != nil || !k.Private().Equal(priv) {
		t.Fatalf("PKCS#8 key: %v", err)
	}
	// Another curve is refused.
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ = x509.MarshalECPrivateKey(p384)
	if _, err := LoadKey(write("p384", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))); err == nil {
		t.Fatal("P-384 key accepted")
	}
}
