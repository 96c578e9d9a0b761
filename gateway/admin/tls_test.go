package admin_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"telematics/pkg/tlsconf"
)

// Over HTTPS the admin verifies the gateway with --ca; without it, or with another CA, the
// command fails and says to pass --ca; --ca with an http:// server is a usage error.
func TestAdminOverTLS(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	httpsURL := g.cloud.HTTPSURL()
	other, err := tlsconf.EnsureLocalCA(filepath.Join(t.TempDir(), "other"), tlsconf.DefaultHosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"--server", httpsURL, "--token-file", g.tokenFile}

	if r := runAdmin(append(base, "--ca", g.cloud.CAFile(), "vehicle", "add", vinA, "--json"), ""); r.code != 0 || !strings.Contains(r.stdout, `"ca_pem"`) {
		t.Fatalf("vehicle add --json over HTTPS: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for name, args := range map[string][]string{
		"without --ca": append(append([]string{}, base...), "vehicle", "list"),
		"another CA":   append(append([]string{}, base...), "--ca", other.CA, "vehicle", "list"),
	} {
		r := runAdmin(args, "")
		if r.code != 1 || !strings.Contains(r.stderr, "--ca") || !strings.Contains(r.stderr, "certificate") {
			t.Errorf("%s: exit %d, want 1 and a hint to pass --ca:\n%s", name, r.code, r.stderr)
		}
	}
	r := runAdmin([]string{"--server", g.cloud.HTTPURL(), "--token-file", g.tokenFile, "--ca", g.cloud.CAFile(), "vehicle", "list"}, "")
	if r.code != 2 || !strings.Contains(r.stderr, "plain text") {
		t.Errorf("--ca with http://: exit %d, want 2:\n%s", r.code, r.stderr)
	}
}
