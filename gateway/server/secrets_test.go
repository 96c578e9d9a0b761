package server_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"telematics/gateway/server"
)

// TestSecretFilesModeChecked: like totp.key, the signing keys and the admin token are refused
// when group or others may read them, with an error that says what to run.
func TestSecretFilesModeChecked(t *testing.T) {
	t.Parallel()
	for _, name := range []string{server.SigningKeyFile, server.AdminTokenFile, server.PrevSigningKeyFile} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			startGateway(t, dir, nil).Close()
			if name == server.PrevSigningKeyFile {
				if err := server.RotateSigningKey(dir, io.Discard); err != nil {
					t.Fatal(err)
				}
			}
			path := filepath.Join(dir, name)
			if err := os.Chmod(path, 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := server.DefaultConfig()
			cfg.Data = dir
			cfg.MQTTAddr, cfg.WSAddr, cfg.HTTPAddr = "127.0.0.1:0", "", "127.0.0.1:0"
			cfg.TLS.MQTTAddr, cfg.TLS.WSAddr, cfg.TLS.HTTPAddr = "", "", "" // fixed ports would collide with parallel tests
			g, err := server.Start(context.Background(), cfg, server.Options{PasswordParams: &cheap})
			if err == nil {
				g.Close()
				t.Fatalf("the gateway started with %s readable by others", name)
			}
			if !errors.Is(err, server.ErrSecretFileMode) || !strings.Contains(err.Error(), "chmod 600 "+path) {
				t.Fatalf("error %q does not say `chmod 600 %s`", err, path)
			}
			// After the fix it starts.
			if err := os.Chmod(path, 0o600); err != nil {
				t.Fatal(err)
			}
			startGateway(t, dir, nil)
		})
	}
}
