package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrSecretFileMode means a secret file of the data directory (a signing key, the admin
// token) may be read by other users of the machine. The gateway refuses to start with it, as
// it does for totp.key: whoever read the file could sign tokens or use the admin API.
var ErrSecretFileMode = errors.New("secret file readable by group or others")

// checkSecretFile refuses a secret file that group or others may access. A missing file is
// not an error here: the gateway makes it, 0600.
func checkSecretFile(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %v; run `chmod 600 %s`", ErrSecretFileMode, path, perm, path)
	}
	return nil
}

// adminTokenPath is where the admin token is kept: AdminTokenFile, else DATA/admin.token.
func (c Config) adminTokenPath() string {
	if c.AdminTokenFile != "" {
		return c.AdminTokenFile
	}
	return filepath.Join(c.Data, AdminTokenFile)
}
