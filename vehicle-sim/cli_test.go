package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"telematics/internal/testutil"
	"telematics/internal/testutil/termtest"
	"telematics/pkg/cmdline"
	"telematics/pkg/phone"
)

// commandPaths walks the command tree and returns every command's path below the root
// ("app key pair"), hidden ones (bench worker) too.
func commandPaths(c *cobra.Command, prefix []string) [][]string {
	var out [][]string
	for _, sub := range c.Commands() {
		p := append(append([]string{}, prefix...), sub.Name())
		out = append(out, p)
		out = append(out, commandPaths(sub, p)...)
	}
	return out
}

// TestHelpForEveryCommand: `--help`, `-h` and `help CMD` exit 0 for every command, on stdout,
// without a token, a server, a session or a data dir; every flag shows its SIM_* variable
// (but a TOTP code's, which has none). Before, `app login|send|key create --help` and `drill
// --help` exited 2, and `app key --help` said unknown command "--help".
func TestHelpForEveryCommand(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	vars := map[string]string{"HOME": home}
	paths := commandPaths(newRoot(stdio{Getenv: func(k string) string { return vars[k] }}), nil)
	if len(paths) < 20 {
		t.Fatalf("only %d commands: %v", len(paths), paths)
	}
	for _, p := range paths {
		for _, args := range [][]string{append(append([]string{}, p...), "--help"), append(append([]string{}, p...), "-h"),
			append([]string{"help"}, p...)} {
			code, stdout, stderr := runMain(context.Background(), args, vars)
			if code != 0 || stderr.String() != "" || !strings.Contains(stdout.String(), "Usage:") {
				t.Errorf("%v: exit %d\nstdout %s\nstderr %s", args, code, stdout, stderr)
			}
		}
	}
	if entries, _ := os.ReadDir(home); len(entries) != 0 {
		t.Errorf("help wrote into HOME: %v", entries)
	}
	// Every flag names its variable in its help.
	checked := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		check := func(f *pflag.Flag) {
			switch f.Name {
			case "help", "version", "totp", "proof":
				return
			}
			if c.Name() == "completion" || c.HasParent() && c.Parent().Name() == "completion" {
				return
			}
			checked++
			if !strings.Contains(f.Usage, "[$SIM_") {
				t.Errorf("%s --%s: help names no variable: %q", c.CommandPath(), f.Name, f.Usage)
			}
		}
		c.LocalNonPersistentFlags().VisitAll(check)
		c.PersistentFlags().VisitAll(check)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := newRoot(stdio{Getenv: func(k string) string { return vars[k] }})
	// The variables are added to the help when the tree runs: run it once.
	_ = dispatchRoot(root, []string{"--help"}, vars)
	walk(root)
	if checked < 60 {
		t.Fatalf("only %d flags checked", checked)
	}
}

// dispatchRoot runs an already built root, as dispatch does.
func dispatchRoot(root *cobra.Command, args []string, vars map[string]string) int {
	var environ []string
	for k, v := range vars {
		environ = append(environ, k+"="+v)
	}
	return cmdlineExecute(root, args, environ)
}

func TestVersion(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--version"}, {"-v"}} {
		code, stdout, stderr := runMain(context.Background(), args, nil)
		if code != 0 || !strings.HasPrefix(stdout.String(), "vehicle-sim ") || !strings.Contains(stdout.String(), "go1.") || stderr.String() != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	if code, stdout, _ := runMain(context.Background(), []string{"completion", "bash"}, nil); code != 0 || !strings.Contains(stdout.String(), "vehicle-sim") {
		t.Errorf("completion bash: exit %d", code)
	}
}

// loginStub is the gateway's login and password-change endpoints: it records the passwords
// it was given (for a change: the current one, then the new one).
func loginStub(t *testing.T) (*httptest.Server, func() []string) {
	var mu sync.Mutex
	var passwords []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Username string `json:"username"`
			Password string `json:"password"`
			Old      string `json:"old_password"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		if req.Old != "" {
			passwords = append(passwords, req.Old)
		}
		passwords = append(passwords, req.Password)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"user": "alice", "token": "tok", "broker_url": "tcp://127.0.0.1:1883",
			"client_id_prefix": "alice-", "expires_at": time.Now().Add(time.Hour).UnixMilli()})
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), passwords...)
	}
}

// TestFlagsInEveryPosition: persistent and local flags before or after the command and its
// arguments. Before, `vehicle-sim app login --user U --gateway URL` exited 2.
func TestFlagsInEveryPosition(t *testing.T) {
	t.Parallel()
	srv, passwords := loginStub(t)
	dir := t.TempDir()
	session := filepath.Join(dir, "s.json")
	for _, args := range [][]string{
		{"app", "login", "--user", "alice", "--gateway", srv.URL, "--session", session},
		{"app", "--gateway", srv.URL, "login", "--session", session, "--user", "alice"},
		{"app", "--session", session, "--gateway", srv.URL, "login", "--user", "alice"},
		{"app", "login", "--gateway=" + srv.URL, "--user=alice", "--session=" + session},
	} {
		os.Remove(session)
		code, stdout, stderr := runMainIn(context.Background(), strings.NewReader("correct horse\n"), args, nil)
		if code != 0 || !strings.Contains(stdout.String(), "logged in as alice") {
			t.Fatalf("%v: exit %d\nstdout %s\nstderr %s", args, code, stdout, stderr)
		}
		if _, err := os.Stat(session); err != nil {
			t.Fatalf("%v: no session: %v", args, err)
		}
	}
	if p := passwords(); len(p) != 4 || p[0] != "correct horse" {
		t.Fatalf("passwords %q", p)
	}
	// A key file named before or after the subcommand; a VIN and flags in any order.
	key := filepath.Join(dir, "phone.key")
	if code, _, stderr := runMain(context.Background(), []string{"app", "key", "create", "--key", key}, nil); code != 0 {
		t.Fatalf("key create --key after: %s", stderr)
	}
	code, stdout, _ := runMain(context.Background(), []string{"app", "--key", key, "key", "show", "--json"}, nil)
	var shown map[string]string
	if err := json.Unmarshal([]byte(stdout.String()), &shown); code != 0 || err != nil || shown["path"] != key {
		t.Fatalf("key show: %d %s", code, stdout)
	}
	for _, args := range [][]string{
		{"app", "send", "--local", "wvwzzz1jzxw000001", "--user", "alice", "unlock", "--key", key, "--link", "127.0.0.1:1"},
		{"app", "--key", key, "send", "WVWZZZ1JZXW000001", "unlock", "--local", "--link=127.0.0.1:1", "--user", "alice"},
	} {
		// Nothing listens on the link: the command got as far as trying it.
		code, _, stderr := runMain(context.Background(), args, nil)
		if code != 1 || !strings.Contains(stderr.String(), "are you next to the car") {
			t.Fatalf("%v: exit %d, stderr %s", args, code, stderr)
		}
	}
	// Wrong arguments are usage errors that say what is wrong, with a pointer to help.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"app", "send", "WVWZZZ1JZXW000001"}, "need VIN and ACTION"},
		{[]string{"app", "send", "WVWZZZ1JZXW000001", "fly"}, `unknown action "fly"`},
		{[]string{"app", "key", "pair"}, "need VIN"},
		{[]string{"app", "login", "extra", "--user", "alice"}, "unknown command"},
		{[]string{"app", "login", "--nope"}, "unknown flag: --nope"},
		{[]string{"bench"}, "name a scenario"},
		{[]string{"bench", "fly"}, `unknown command "fly"`},
		{[]string{"bench", "telemetry", "--qos", "2"}, "--qos"},
		{[]string{"run", "extra", "--cars", "1"}, "unexpected arguments: extra"},
	} {
		code, _, stderr := runMain(context.Background(), tc.args, nil)
		if code != 2 || !strings.Contains(stderr.String(), tc.want) || !strings.Contains(stderr.String(), "--help") {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
}

// runAtTerminal runs vehicle-sim with the terminal as stdin and stderr, in the background.
func runAtTerminal(term *termtest.Terminal, args []string) (<-chan int, *testutil.Buffer) {
	stdout := &testutil.Buffer{}
	done := make(chan int, 1)
	go func() {
		done <- dispatch(context.Background(), args,
			stdio{Stdin: term.TTY, Stdout: stdout, Stderr: term.TTY, Getenv: func(string) string { return "" }, Environ: []string{}})
	}()
	return done, stdout
}

func exitOf(t *testing.T, done <-chan int) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(20 * time.Second):
		t.Fatal("the command did not finish")
		return -1
	}
}

// TestLoginPromptsForThePasswordWithoutEcho: at a terminal, `app login` asks for the password
// on stderr and reads it with echo off; the password never appears on the screen. Before,
// nothing prompted and the typed password was echoed.
func TestLoginPromptsForThePasswordWithoutEcho(t *testing.T) {
	t.Parallel()
	srv, passwords := loginStub(t)
	term := termtest.New(t)
	session := filepath.Join(t.TempDir(), "s.json")
	done, stdout := runAtTerminal(term, []string{"app", "login", "--user", "alice", "--gateway", srv.URL, "--session", session})
	const secret = "tr0ub4dor & 3"
	term.TypeAt(t, "password for alice: ", 1, secret)
	if code := exitOf(t, done); code != 0 || !strings.Contains(stdout.String(), "logged in as alice") {
		t.Fatalf("exit %d, stdout %s, screen %q", code, stdout.String(), term.Shown())
	}
	if p := passwords(); len(p) != 1 || p[0] != secret {
		t.Fatalf("the gateway got %q", p)
	}
	if strings.Contains(term.Shown(), secret) {
		t.Fatalf("the password was echoed: %q", term.Shown())
	}
	if _, err := phoneSession(session); err != nil {
		t.Fatal(err)
	}

	// `app password`: the current one, the new one twice, none echoed.
	done, _ = runAtTerminal(term, []string{"app", "password", "--session", session})
	term.TypeAt(t, "current password: ", 1, secret)
	term.TypeAt(t, "new password: ", 1, "a new passphrase")
	term.TypeAt(t, "again: ", 1, "a new passphrase")
	if code, p := exitOf(t, done), passwords(); code != 0 || len(p) != 3 || p[1] != secret || p[2] != "a new passphrase" {
		t.Fatalf("password: exit %d, gateway got %q, screen %q", code, p, term.Shown())
	}
	if strings.Contains(term.Shown(), "a new passphrase") {
		t.Fatalf("the new password was echoed: %q", term.Shown())
	}
}

func phoneSession(path string) (*phone.Session, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s phone.Session
	return &s, json.Unmarshal(b, &s)
}

// runMainIn is runMain with stdin.
func runMainIn(ctx context.Context, stdin io.Reader, args []string, vars map[string]string) (int, *testutil.Buffer, *testutil.Buffer) {
	stdout, stderr := &testutil.Buffer{}, &testutil.Buffer{}
	var environ []string
	for k, v := range vars {
		environ = append(environ, k+"="+v)
	}
	env := stdio{Stdin: stdin, Stdout: stdout, Stderr: stderr, Getenv: func(k string) string { return vars[k] }, Environ: environ}
	return dispatch(ctx, args, env), stdout, stderr
}

func cmdlineExecute(root *cobra.Command, args, environ []string) int {
	return cmdline.ExecuteWithEnv(context.Background(), root, args, environ, strings.NewReader(""), io.Discard, io.Discard)
}
