package appcmd

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// --ca asks for verification: with a plain http:// gateway it is a usage error, not a login in
// plain text.
func TestLoginCAWithPlainGatewayRefused(t *testing.T) {
	home := t.TempDir()
	var out, errb bytes.Buffer
	code := Run(context.Background(), []string{"login", "--user", "alice", "--gateway", "http://127.0.0.1:1",
		"--ca", filepath.Join(home, "ca.pem")},
		Env{Stdin: strings.NewReader("pw\n"), Stdout: &out, Stderr: &errb, Getenv: func(k string) string {
			if k == "HOME" {
				return home
			}
			return ""
		}})
	if code != 2 || !strings.Contains(errb.String(), "plain text") {
		t.Fatalf("exit %d, want 2:\n%s%s", code, out.String(), errb.String())
	}
}
