package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"telematics/gateway/accounts"
	"telematics/gateway/admin"
	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/cmdline"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// The commands run in-process, as the gateway binary runs them, against a real gateway
// (gateway/harness) on loopback ports with its data in the test's TempDir, 2FA off.

const (
	vinA     = "1HGCM82633A004352"
	vinB     = "2HGCM82633A004353"
	password = "correct horse battery"
)

var cheap = accounts.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}

// gw is a running gateway and the admin command line pointed at it.
type gw struct {
	t         *testing.T
	cloud     *harness.Cloud
	tokenFile string
}

func startGateway(t *testing.T) *gw {
	t.Helper()
	c := harness.MustStart(t, harness.Options{PasswordParams: &cheap, Configure: func(cfg *server.Config) { cfg.TwoFA.Mode = twofa.ModeOff }})
	return &gw{t: t, cloud: c, tokenFile: filepath.Join(c.Dir, server.AdminTokenFile)}
}

// result is what one command did.
type result struct {
	stdout, stderr string
	code           int
}

// run runs `gateway admin --server URL --token-file FILE ARGS…` with stdin and an empty
// environment.
func (g *gw) run(stdin string, args ...string) result {
	g.t.Helper()
	return runAdmin(append([]string{"--server", g.cloud.HTTPURL(), "--token-file", g.tokenFile}, args...), stdin)
}

// runAdmin runs `gateway admin ARGS…` as the gateway binary does, with no environment.
func runAdmin(args []string, stdin string) result {
	root := cmdline.NewRoot("gateway", "The cloud side of the telematics system", "GATEWAY")
	root.AddCommand(admin.Command())
	var out, errb bytes.Buffer
	code := cmdline.ExecuteWithEnv(context.Background(), root, append([]string{"admin"}, args...), []string{},
		strings.NewReader(stdin), &out, &errb)
	return result{out.String(), errb.String(), code}
}

// ok runs a command that must succeed and returns its stdout.
func (g *gw) ok(stdin string, args ...string) string {
	g.t.Helper()
	r := g.run(stdin, args...)
	if r.code != 0 {
		g.t.Fatalf("%q: exit %d\nstdout %s\nstderr %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// decode decodes a command's --json output strictly into v (a pkg/api type): a field the
// type does not have fails.
func decode(t *testing.T, out string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("--json output is not a %T: %v\n%s", v, err, out)
	}
}

// client is an admin API client of the gateway, for what the commands do not show.
func (g *gw) client() *api.Client { return api.NewClient(g.cloud.HTTPURL(), g.cloud.G.AdminToken()) }

// addUser adds name through the command line, the password read from stdin.
func (g *gw) addUser(name string) {
	g.t.Helper()
	if out := g.ok(password+"\n", "user", "add", name); out != "user "+name+" added\n" {
		g.t.Fatalf("user add %s: %q", name, out)
	}
}

// pair logs user in and pairs a new phone key with vin.
func (g *gw) pair(user, vin string) protocol.WhitelistKey {
	g.t.Helper()
	ctx := context.Background()
	c := api.NewClient(g.cloud.HTTPURL(), "")
	lr, err := c.Login(ctx, user, password, "")
	if err != nil {
		g.t.Fatal(err)
	}
	k, _ := sign.Generate()
	pub, _ := sign.EncodePublic(k.Public())
	wk, err := c.WithToken(lr.Token).PairKey(ctx, api.PairRequest{VIN: vin, PublicKey: pub, Label: "phone"})
	if err != nil {
		g.t.Fatal(err)
	}
	return wk
}

// lines are the non-empty lines of s.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// fields are the columns of a table line (columns are separated by two spaces or more).
func fields(line string) []string {
	var out []string
	for _, f := range strings.Split(line, "  ") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Failures exit with the documented codes: 2 for a usage error (with a pointer to --help),
// 1 for what the gateway refused (its reason and message), or when it cannot be asked.
func TestExitCodesAndMessages(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	wrongToken := filepath.Join(t.TempDir(), "wrong.token")
	if err := os.WriteFile(wrongToken, []byte("not-the-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		run    func() result
		code   int
		stderr string
	}{
		{"unknown VIN", func() result { return g.run("", "vehicle", "show", vinA) }, 1,
			"gateway admin vehicle show: vehicle_unknown: no vehicle " + vinA + "\n"},
		{"unknown VIN, assign", func() result { return g.run("", "vehicle", "assign", vinA, "alice", "--role", "owner") }, 1,
			"gateway admin vehicle assign: vehicle_unknown: "},
		{"unknown user", func() result { return g.run("", "user", "disable", "nobody") }, 1,
			"gateway admin user disable: bad_request: no user nobody (see gateway admin user list)\n"},
		{"short password", func() result { return g.run("short\n", "user", "add", "alice") }, 1,
			"gateway admin user add: bad_request: passwords are 12 to 1024 bytes\n"},
		{"bad flag", func() result { return g.run("", "vehicle", "list", "--frobnicate") }, 2,
			"unknown flag: --frobnicate\nsee 'gateway admin vehicle list --help'\n"},
		{"bad flag value", func() result { return g.run("", "vehicle", "add", "--count", "many") }, 2, "--help"},
		{"assign without --role", func() result { return g.run("", "vehicle", "assign", vinA, "alice") }, 2, "--role is required"},
		{"unknown output", func() result { return g.run("", "audit", "--output", "xml") }, 2, `--output "xml": want table, json or csv`},
		{"wrong token", func() result {
			return runAdmin([]string{"vehicle", "list", "--server", g.cloud.HTTPURL(), "--token-file", wrongToken}, "")
		}, 1, "unauthenticated: missing or wrong admin token"},
		{"no gateway", func() result {
			return runAdmin([]string{"vehicle", "list", "--server", "http://127.0.0.1:1", "--token-file", g.tokenFile}, "")
		}, 1, "gateway unreachable"},
	} {
		r := tc.run()
		if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) || r.stdout != "" {
			t.Errorf("%s: exit %d, stderr %q, stdout %q; want exit %d and %q", tc.name, r.code, r.stderr, r.stdout, tc.code, tc.stderr)
		}
	}
}

// admin.Run is the command line of the gateway binary's `admin`.
func TestRun(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	var out, errb bytes.Buffer
	code := admin.Run(context.Background(), []string{"vehicle", "list", "--server", g.cloud.HTTPURL(), "--token-file", g.tokenFile, "--json"},
		admin.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb})
	if code != 0 || strings.TrimSpace(out.String()) != "[]" {
		t.Fatalf("exit %d, %q %q", code, out.String(), errb.String())
	}
	code = admin.Run(context.Background(), []string{"vehicle", "list", "--bogus"}, admin.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb})
	if code != 2 {
		t.Fatalf("bad flag: exit %d, %q", code, errb.String())
	}
}
