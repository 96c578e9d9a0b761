package server_test

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"telematics/gateway/server"
	"telematics/pkg/tlsconf"
)

// With public_dir and admin_token_file (as docker-compose runs the gateway), the public keys
// are written to a directory of their own, which follows a rotation and its end, and the admin
// token to its own file: a broker or a provisioning step is given those without the data
// directory.
func TestPublicDirAndAdminTokenFile(t *testing.T) {
	t.Parallel()
	dir, pub := t.TempDir(), t.TempDir()
	tokFile := filepath.Join(t.TempDir(), "admin", "admin.token")
	with := func(c *server.Config) { c.PublicDir, c.AdminTokenFile = pub, tokFile }
	files := func() []string {
		t.Helper()
		es, err := os.ReadDir(pub)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		return names
	}

	g := startGateway(t, dir, with)
	b, err := os.ReadFile(tokFile)
	if err != nil || strings.TrimSpace(string(b)) != g.AdminToken() {
		t.Fatalf("admin token file: %q %v", b, err)
	}
	if fi, _ := os.Stat(tokFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("admin token file mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(dir, server.AdminTokenFile)); !os.IsNotExist(err) {
		t.Errorf("an admin token in the data directory too: %v", err)
	}
	if got := files(); !slices.Equal(got, []string{tlsconf.CAFile, server.DeviceCAFile, server.PublicKeyFile}) {
		t.Fatalf("public dir holds %v", got)
	}
	g.Close()

	if err := server.RotateSigningKey(dir, io.Discard); err != nil {
		t.Fatal(err)
	}
	startGateway(t, dir, with).Close()
	if got := files(); !slices.Equal(got, []string{tlsconf.CAFile, server.DeviceCAFile, server.PrevPublicKeyFile, server.PublicKeyFile}) {
		t.Fatalf("public dir during a rotation holds %v", got)
	}
	if err := server.RetirePreviousKey(dir, io.Discard); err != nil { // no cars: nothing to wait for
		t.Fatal(err)
	}
	startGateway(t, dir, with).Close()
	if got := files(); !slices.Equal(got, []string{tlsconf.CAFile, server.DeviceCAFile, server.PublicKeyFile}) {
		t.Fatalf("public dir after the rotation ended holds %v", got)
	}
}
