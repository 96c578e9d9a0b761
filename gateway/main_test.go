package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"telematics/gateway/accounts"
	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/internal/testutil/termtest"
	"telematics/pkg/cmdline"
)

// run executes the gateway binary's command line as a user does, with only environ set.
func run(t *testing.T, environ []string, stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	var out, errb bytes.Buffer
	code = cmdline.ExecuteWithEnv(context.Background(), newRoot(environ), args, environ, stdin, &out, &errb)
	return out.String(), errb.String(), code
}

// Every command's --help (and `help CMD`) exits 0 on stdout, without a token, server or data
// dir: `admin vehicle --help` asked for the admin token, `admin vehicle add --help` and
// `rotate-key --help` exited 2, `probe --help` fetched "--help".
func TestHelpExitsZeroForEveryCommand(t *testing.T) {
	t.Chdir(t.TempDir()) // no ./data/admin.token to find
	n := 0
	cmdline.Walk(newRoot(nil), func(cmd *cobra.Command, path []string) {
		n++
		for _, args := range [][]string{append(append([]string(nil), path...), "--help"), append([]string{"help"}, path...)} {
			out, errs, code := run(t, nil, nil, args...)
			if code != 0 || errs != "" || !strings.Contains(out, "Usage:") {
				t.Errorf("%q: exit %d, stderr %q, stdout %.80q", args, code, errs, out)
			}
		}
	})
	if n < 20 {
		t.Fatalf("walked only %d commands", n)
	}
	if ents, _ := os.ReadDir("."); len(ents) != 0 {
		t.Fatalf("help left files behind: %v", ents)
	}
}

func TestVersionAndCompletion(t *testing.T) {
	if out, _, code := run(t, nil, nil, "--version"); code != 0 || !strings.HasPrefix(out, "gateway ") {
		t.Fatalf("--version: %d %q", code, out)
	}
	for _, sh := range []string{"bash", "zsh", "fish", "powershell"} {
		if out, errs, code := run(t, nil, nil, "completion", sh); code != 0 || len(out) < 100 {
			t.Errorf("completion %s: %d %q", sh, code, errs)
		}
	}
}

// Each flag's variable is shown in its help, the admin ones under the names operators use.
func TestHelpShowsEachFlagsVariable(t *testing.T) {
	out, _, _ := run(t, nil, nil, "admin", "vehicle", "list", "--help")
	for _, v := range []string{"[$GATEWAY_ADMIN_SERVER]", "[$GATEWAY_ADMIN_TOKEN_FILE]", "[$GATEWAY_ADMIN_JSON]"} {
		if !strings.Contains(out, v) {
			t.Errorf("admin vehicle list --help lacks %s:\n%s", v, out)
		}
	}
	// The demo's and the probe's flags have their own variables: a GATEWAY_ADMIN_JSON meant
	// for scripts around the admin does not turn the demo's story into JSON.
	out, _, _ = run(t, nil, nil, "demo", "--help")
	if !strings.Contains(out, "[$GATEWAY_DEMO_JSON]") || strings.Contains(out, "[$GATEWAY_JSON]") {
		t.Errorf("demo --help: want GATEWAY_DEMO_JSON:\n%s", out)
	}
	if out, _, _ = run(t, nil, nil, "drill", "outage", "--help"); !strings.Contains(out, "[$GATEWAY_DRILL_CARS]") || !strings.Contains(out, "[$GATEWAY_DRILL_CLOUD_TIMEOUT]") {
		t.Errorf("drill outage --help: want GATEWAY_DRILL_CARS and GATEWAY_DRILL_CLOUD_TIMEOUT:\n%s", out)
	}
	if out, _, _ = run(t, nil, nil, "probe", "--help"); !strings.Contains(out, "[$GATEWAY_PROBE_TIMEOUT]") {
		t.Errorf("probe --help: want GATEWAY_PROBE_TIMEOUT:\n%s", out)
	}
	out, _, _ = run(t, nil, nil, "serve", "--help")
	for _, v := range []string{"[$GATEWAY_DATA]", "[$GATEWAY_WS_ADDR]", "[$GATEWAY_HTTP_ADDR]", "[$GATEWAY_CONFIG]"} {
		if !strings.Contains(out, v) {
			t.Errorf("serve --help lacks %s:\n%s", v, out)
		}
	}
}

var cheap = accounts.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}

// startGateway runs a gateway (gateway/harness) on loopback ports with its data in a
// temporary dir, 2FA off.
func startGateway(t *testing.T) (url, tokenFile string) {
	t.Helper()
	c := harness.MustStart(t, harness.Options{PasswordParams: &cheap, Configure: func(cfg *server.Config) { cfg.TwoFA.Mode = twofa.ModeOff }})
	return c.HTTPURL(), filepath.Join(c.Dir, server.AdminTokenFile)
}

// `gateway admin vehicle list --server URL --token-file F` failed with "cannot read the admin
// token: open ./data/admin.token": the flags had to come before `vehicle`.
func TestAdminFlagsInEveryPosition(t *testing.T) {
	t.Chdir(t.TempDir())
	url, tok := startGateway(t)
	if _, errs, code := run(t, nil, nil, "admin", "vehicle", "add", "--count", "1", "--server", url, "--token-file", tok); code != 0 {
		t.Fatalf("vehicle add: %s", errs)
	}
	flags := []string{"--server", url, "--token-file", tok}
	for name, tc := range map[string]struct {
		env  []string
		args []string
	}{
		"after the command":      {nil, append([]string{"admin", "vehicle", "list"}, flags...)},
		"before the group":       {nil, append(append([]string{"admin"}, flags...), "vehicle", "list")},
		"between group and verb": {nil, append(append([]string{"admin", "vehicle"}, flags...), "list")},
		"split":                  {nil, []string{"admin", "--server", url, "vehicle", "list", "--token-file", tok}},
		"from the environment":   {[]string{"GATEWAY_ADMIN_SERVER=" + url, "GATEWAY_ADMIN_TOKEN_FILE=" + tok}, []string{"admin", "vehicle", "list"}},
	} {
		out, errs, code := run(t, tc.env, nil, tc.args...)
		if code != 0 || !strings.Contains(out, "VIN") || !strings.Contains(out, "never seen") {
			t.Errorf("%s: exit %d, %q %s", name, code, out, errs)
		}
		out, errs, code = run(t, tc.env, nil, append(tc.args, "--json")...)
		var vs []json.RawMessage
		if code != 0 || json.Unmarshal([]byte(out), &vs) != nil || len(vs) != 1 {
			t.Errorf("%s --json: exit %d, %q %s", name, code, out, errs)
		}
	}
}

// A missing token file names the file, the flag and the variable; help never needs it.
func TestAdminMissingTokenNamesTheFlagAndVariable(t *testing.T) {
	t.Chdir(t.TempDir())
	_, errs, code := run(t, nil, nil, "admin", "vehicle", "list", "--server", "http://127.0.0.1:1")
	if code != 1 || !strings.Contains(errs, "./data/admin.token") || !strings.Contains(errs, "--token-file") || !strings.Contains(errs, "GATEWAY_ADMIN_TOKEN_FILE") {
		t.Fatalf("exit %d, %q", code, errs)
	}
}

// Wrong arguments are usage errors (exit 2) that say what is expected, checked before the
// token is read; `admin vehicle list x --json` and `admin audit alice --limit 5` were ignored.
func TestAdminArgumentErrors(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"admin", "vehicle", "list", "x", "--json"}, `takes no arguments, got "x"`},
		{[]string{"admin", "audit", "alice", "--limit", "5"}, "--user"},
		{[]string{"admin", "vehicle", "show"}, "needs VIN, got 0 arguments"},
		{[]string{"admin", "vehicle", "assign", "VIN"}, "needs VIN USER"},
		{[]string{"admin", "vehicle", "add"}, "--count"},
		{[]string{"admin", "vehicle", "frobnicate"}, "unknown command"},
		{[]string{"admin", "audit", "--since", "yesterday"}, "RFC 3339"},
		{[]string{"serve", "--ws-addr", ""}, "write off"},
		{[]string{"probe"}, "needs one URL"},
		{[]string{"rotate-key", "extra"}, "unknown command"},
	} {
		_, errs, code := run(t, nil, nil, tc.args...)
		// A configuration error of serve is exit 2 too, without a pointer to --help.
		hint := tc.args[0] == "serve" || strings.Contains(errs, "--help")
		if code != 2 || !strings.Contains(errs, tc.want) || !hint {
			t.Errorf("%q: exit %d, stderr %q (want %q)", tc.args, code, errs, tc.want)
		}
	}
}

// The drill's wrong arguments are usage errors (exit 2) that say what is wrong, with a pointer
// to help (they were vehicle-sim's, when the drill was `vehicle-sim drill`).
func TestDrillArgumentErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"drill", "outage", "--cars", "0"}, "--cars must be 1..2000"},
		{[]string{"drill", "outage", "--cloud-timeout", "0s"}, "--cloud-timeout must be positive"},
		{[]string{"drill"}, "name a drill"},
	} {
		_, errs, code := run(t, nil, nil, tc.args...)
		if code != 2 || !strings.Contains(errs, tc.want) || !strings.Contains(errs, "--help") {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", tc.args, code, errs, tc.want)
		}
	}
}

// Lowercase VINs are upper-cased, counts are in good English, `vehicle show` is a table with
// readable times unless --json.
func TestAdminNormalisesVINsAndPrintsForPeople(t *testing.T) {
	url, tok := startGateway(t)
	env := []string{"GATEWAY_ADMIN_SERVER=" + url, "GATEWAY_ADMIN_TOKEN_FILE=" + tok}
	_, errs, code := run(t, env, nil, "admin", "vehicle", "add", "1hgcm82633a004352")
	if code != 0 || !strings.Contains(errs, "1 vehicle added") {
		t.Fatalf("vehicle add lowercase: %d %q", code, errs)
	}
	out, errs, code := run(t, env, nil, "admin", "vehicle", "show", "1hgcm82633a004352")
	if code != 0 || !strings.Contains(out, "1HGCM82633A004352") || !strings.Contains(out, "provisioned") || strings.Contains(out, `"created"`) {
		t.Fatalf("vehicle show: %d %q %s", code, out, errs)
	}
	year := time.Now().Format("2006-")
	if !strings.Contains(out, year) {
		t.Fatalf("vehicle show has no readable time: %q", out)
	}
	out, _, code = run(t, env, nil, "admin", "vehicle", "show", "1hgcm82633a004352", "--json")
	var v struct {
		VIN       string `json:"vin"`
		CreatedMs int64  `json:"created"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.VIN != "1HGCM82633A004352" || v.CreatedMs == 0 {
		t.Fatalf("vehicle show --json: %d %q", code, out)
	}
}

// `audit` prints a table with local times, JSON lines with --json, CSV with --csv, and takes a
// time range (--since, --until: RFC 3339, a date or a duration).
func TestAdminAuditTableTimeRangeAndCSV(t *testing.T) {
	url, tok := startGateway(t)
	env := []string{"GATEWAY_ADMIN_SERVER=" + url, "GATEWAY_ADMIN_TOKEN_FILE=" + tok}
	if _, errs, code := run(t, env, nil, "admin", "vehicle", "add", "--count", "2"); code != 0 {
		t.Fatal(errs)
	}
	out, _, code := run(t, env, nil, "admin", "audit", "--kind", "admin")
	if code != 0 || !strings.HasPrefix(out, "TIME") || !strings.Contains(out, time.Now().Format("2006-")) {
		t.Fatalf("audit table: %d %q", code, out)
	}
	out, _, code = run(t, env, nil, "admin", "audit", "--kind", "admin", "--since", "1h", "--csv")
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if code != 0 || err != nil || len(rows) < 2 || rows[0][1] != "time" || rows[1][2] != "admin" {
		t.Fatalf("audit --since 1h --csv: %d %v %q", code, err, out)
	}
	if _, err := time.Parse(time.RFC3339, rows[1][1]); err != nil {
		t.Fatalf("CSV time %q: %v", rows[1][1], err)
	}
	for _, args := range [][]string{
		{"--until", "2000-01-01"},
		{"--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)},
	} {
		out, errs, code := run(t, env, nil, append([]string{"admin", "audit", "--json"}, args...)...)
		if code != 0 || strings.TrimSpace(out) != "" {
			t.Errorf("audit %q: %d %q %s", args, code, out, errs)
		}
	}
	out, _, code = run(t, env, nil, "admin", "audit", "--output", "json", "--since", "2000-01-01", "--limit", "1")
	var e map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &e) != nil || e["kind"] == nil {
		t.Fatalf("audit --output json: %d %q", code, out)
	}
}

// `gateway serve --data /nonexistent/deep/dir` is refused and creates nothing.
func TestServeTypoedDataDirRefused(t *testing.T) {
	base := t.TempDir()
	_, errs, code := run(t, nil, nil, "serve", "--data", filepath.Join(base, "nonexistent", "deep", "dir"),
		"--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "off")
	if code != 1 || !strings.Contains(errs, "--init") {
		t.Fatalf("exit %d, %q", code, errs)
	}
	if ents, _ := os.ReadDir(base); len(ents) != 0 {
		t.Fatalf("the typo was created: %v", ents)
	}
}

// `gateway admin user add NAME` at a terminal prompts twice without echo; the password never
// appears on the screen.
func TestUserAddPromptsWithoutEchoOnATerminal(t *testing.T) {
	url, tok := startGateway(t)
	term := termtest.New(t)
	const password = "correct horse battery staple"
	type result struct {
		out  string
		code int
	}
	done := make(chan result, 1)
	go func() {
		var out bytes.Buffer
		env := []string{"GATEWAY_ADMIN_SERVER=" + url, "GATEWAY_ADMIN_TOKEN_FILE=" + tok}
		code := cmdline.ExecuteWithEnv(context.Background(), newRoot(env), []string{"admin", "user", "add", "dora"}, env, term.TTY, &out, term.TTY)
		done <- result{out.String(), code}
	}()
	term.TypeAt(t, "Password for dora: ", 1, password)
	term.TypeAt(t, "again: ", 1, password)
	r := <-done
	if r.code != 0 || !strings.Contains(r.out, "user dora added") {
		t.Fatalf("user add: %d %q, screen %q", r.code, r.out, term.Shown())
	}
	if strings.Contains(term.Shown(), password) {
		t.Fatalf("the password was echoed: %q", term.Shown())
	}
}

// `gateway probe --ca` checks an https:// readiness URL against the gateway's CA; without the
// CA the certificate is not trusted and the probe fails, never falling back to plain text.
func TestProbeHTTPSWithCA(t *testing.T) {
	c := harness.MustStart(t, harness.Options{TLS: true, PasswordParams: &cheap})
	url := c.HTTPURL() + "/readyz"
	if !strings.HasPrefix(url, "https://") {
		t.Fatalf("the cloud's URL %s is not https://", url)
	}
	if out, errs, code := run(t, nil, nil, "probe", "--timeout", "20s", "--ca", c.CAFile(), url); code != 0 {
		t.Fatalf("probe --ca: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if _, errs, code := run(t, nil, nil, "probe", "--timeout", "20s", url); code != 1 || !strings.Contains(errs, "certificate") || !strings.Contains(errs, "--ca FILE") {
		t.Errorf("probe without the CA: exit %d, stderr %q; want 1 and a certificate error", code, errs)
	}
	if _, errs, code := run(t, nil, nil, "probe", "--ca", filepath.Join(t.TempDir(), "absent.pem"), url); code != 2 || !strings.Contains(errs, "--ca") {
		t.Errorf("probe with a missing CA file: exit %d, stderr %q; want 2 naming --ca", code, errs)
	}
}
