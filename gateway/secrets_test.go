package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// init-secrets makes the shared secrets 0600 and the public key and device CA certificate for
// the broker; a second run
// keeps them; a secret readable by others is refused; --dir is required.
func TestInitSecrets(t *testing.T) {
	dir, pub := filepath.Join(t.TempDir(), "secrets"), t.TempDir()
	out, errs, code := run(t, nil, nil, "init-secrets", "--dir", dir, "--public-dir", pub)
	if code != 0 || strings.Count(out, "made ") != 4 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
	first := map[string]string{}
	for _, name := range []string{"gateway.key", "totp.key", "admin.token", "device-ca.key"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", name, err, fi.Mode().Perm())
		}
		b, _ := os.ReadFile(filepath.Join(dir, name))
		first[name] = string(b)
	}
	a, errA := os.ReadFile(filepath.Join(dir, "gateway.pub"))
	b, errB := os.ReadFile(filepath.Join(pub, "gateway.pub"))
	if errA != nil || errB != nil || string(a) != string(b) || !strings.Contains(string(a), "PUBLIC KEY") {
		t.Fatalf("gateway.pub: %v, %v, %q vs %q", errA, errB, a, b)
	}
	caA, errA := os.ReadFile(filepath.Join(dir, "device-ca.crt"))
	caB, errB := os.ReadFile(filepath.Join(pub, "device-ca.crt"))
	if errA != nil || errB != nil || string(caA) != string(caB) || !strings.Contains(string(caA), "CERTIFICATE") {
		t.Fatalf("device-ca.crt: %v, %v, %q vs %q", errA, errB, caA, caB)
	}
	if _, err := os.Stat(filepath.Join(pub, "device-ca.key")); !os.IsNotExist(err) {
		t.Fatalf("the device CA's key in the public directory (%v)", err)
	}
	first["device-ca.crt"] = string(caA)
	out, errs, code = run(t, nil, nil, "init-secrets", "--dir", dir)
	if code != 0 || strings.Count(out, "kept ") != 4 {
		t.Fatalf("second run: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	tok := filepath.Join(t.TempDir(), "admin", "token")
	out, errs, code = run(t, nil, nil, "init-secrets", "--dir", dir, "--admin-token-file", tok)
	if fi, err := os.Stat(tok); code != 0 || err != nil || fi.Mode().Perm() != 0o600 || !strings.Contains(out, "made "+tok) {
		t.Fatalf("second run: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	for name, was := range first {
		if b, _ := os.ReadFile(filepath.Join(dir, name)); string(b) != was {
			t.Errorf("second run changed %s", name)
		}
	}
	// A rotation: the previous key's public half is written beside the new one, then removed
	// with the previous key.
	if err := os.Rename(filepath.Join(dir, "gateway.key"), filepath.Join(dir, "gateway.prev.key")); err != nil {
		t.Fatal(err)
	}
	if out, errs, code := run(t, nil, nil, "init-secrets", "--dir", dir, "--public-dir", pub); code != 0 || !strings.Contains(out, "made "+filepath.Join(dir, "gateway.key")) {
		t.Fatalf("rotation: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if prev, err := os.ReadFile(filepath.Join(pub, "gateway.prev.pub")); err != nil || string(prev) != string(a) {
		t.Fatalf("rotation: gateway.prev.pub %q, %v; want the old public key", prev, err)
	}
	if now, _ := os.ReadFile(filepath.Join(pub, "gateway.pub")); string(now) == string(a) {
		t.Fatal("rotation: gateway.pub is still the old key")
	}
	if err := os.Remove(filepath.Join(dir, "gateway.prev.key")); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := run(t, nil, nil, "init-secrets", "--dir", dir, "--public-dir", pub); code != 0 {
		t.Fatalf("end of rotation: exit %d, stderr %q", code, errs)
	}
	if _, err := os.Stat(filepath.Join(pub, "gateway.prev.pub")); !os.IsNotExist(err) {
		t.Fatalf("end of rotation: gateway.prev.pub still there (%v)", err)
	}
	if err := os.Chmod(filepath.Join(dir, "totp.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := run(t, nil, nil, "init-secrets", "--dir", dir); code != 1 || !strings.Contains(errs, "chmod 600") {
		t.Errorf("a 0644 secret: exit %d, stderr %q", code, errs)
	}
	if _, errs, code := run(t, nil, nil, "init-secrets"); code != 2 || !strings.Contains(errs, "--dir is required") {
		t.Errorf("no --dir: exit %d, stderr %q", code, errs)
	}
}
