package cmdline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// ran records what a test command saw.
type ran struct {
	cmd     string
	args    []string
	server  string
	json    bool
	limit   int
	changed bool
}

// testTree is a small binary: tool [--server URL] admin vehicle list [--json] [--limit N] ARGS,
// tool admin vehicle add VIN (exactly one), tool fail, tool leaf.
func testTree(got *ran) *cobra.Command {
	root := NewRoot("tool", "a test tool", "TOOL")
	root.PersistentFlags().String("server", "http://127.0.0.1:8080", "gateway URL")
	admin := &cobra.Command{Use: "admin", Short: "administer"}
	vehicle := &cobra.Command{Use: "vehicle", Short: "vehicles"}
	list := &cobra.Command{
		Use:   "list [VIN...]",
		Short: "list vehicles",
		RunE: func(cmd *cobra.Command, args []string) error {
			got.cmd, got.args = "list", args
			got.server, _ = cmd.Flags().GetString("server")
			got.json, _ = cmd.Flags().GetBool("json")
			got.limit, _ = cmd.Flags().GetInt("limit")
			got.changed = cmd.Flags().Changed("server")
			return nil
		},
	}
	list.Flags().Bool("json", false, "machine output")
	list.Flags().Int("limit", 10, "most rows")
	add := &cobra.Command{
		Use:  "add VIN",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			got.cmd, got.args = "add", args
			return nil
		},
	}
	fail := &cobra.Command{
		Use: "fail",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 && args[0] == "usage" {
				return UsageError("give a %s", "VIN")
			}
			if len(args) > 0 && args[0] == "code" {
				return WithExitCode(3, nil)
			}
			return errors.New("cannot reach the gateway")
		},
	}
	need := &cobra.Command{Use: "need", RunE: func(cmd *cobra.Command, args []string) error {
		got.cmd = "need"
		return nil
	}}
	need.Flags().String("token-file", "", "admin token")
	need.MarkFlagRequired("token-file")
	vehicle.AddCommand(list, add)
	admin.AddCommand(vehicle)
	root.AddCommand(admin, fail, need)
	return root
}

func run(t *testing.T, root *cobra.Command, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = ExecuteWithEnv(context.Background(), root, args, env, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestExecuteFlagsInAnyPosition(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"flags last", []string{"admin", "vehicle", "list", "x", "--server", "http://s", "--json", "--limit", "5"}},
		{"persistent first", []string{"--server", "http://s", "admin", "vehicle", "list", "--json", "x", "--limit=5"}},
		{"persistent in the middle", []string{"admin", "--server=http://s", "vehicle", "list", "--limit", "5", "x", "--json"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got ran
			code, _, stderr := run(t, testTree(&got), nil, tc.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if got.cmd != "list" || fmt.Sprint(got.args) != "[x]" || got.server != "http://s" || !got.json || got.limit != 5 {
				t.Errorf("got %+v", got)
			}
		})
	}
	var got ran
	if code, _, stderr := run(t, testTree(&got), nil, "admin", "vehicle", "add", "--", "-ABC"); code != 0 || fmt.Sprint(got.args) != "[-ABC]" {
		t.Errorf("after --: exit %d, args %q, %s", code, got.args, stderr)
	}
}

func TestExecuteHelpExitsZeroOnStdout(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"}, {"admin", "--help"}, {"admin"}, {"help", "admin", "vehicle"},
		{"admin", "vehicle", "list", "--help"}, {"admin", "vehicle", "add", "--help"},
		{"need", "--help"}, {"help", "need"}, {"completion", "--help"},
	} {
		code, stdout, stderr := run(t, testTree(&ran{}), nil, args...)
		if code != 0 || stderr != "" || !strings.Contains(stdout, "Usage:") {
			t.Errorf("%q: exit %d, stderr %q, stdout %q", args, code, stderr, stdout)
		}
	}
}

func TestExecuteUsageErrorsExitTwo(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"admin", "vehicle", "list", "--bogus"}, "tool admin vehicle list: unknown flag: --bogus\nsee 'tool admin vehicle list --help'"},
		{[]string{"bogus"}, `unknown command "bogus" for "tool"`},
		{[]string{"admin", "vehicel"}, `unknown command "vehicel" for "tool admin" (did you mean vehicle?)`},
		{[]string{"admin", "vehicle", "add"}, "tool admin vehicle add: accepts 1 arg(s), received 0"},
		{[]string{"admin", "vehicle", "add", "a", "b"}, "accepts 1 arg(s), received 2"},
		{[]string{"admin", "vehicle", "list", "--limit", "many"}, `invalid argument "many" for "--limit"`},
		{[]string{"admin", "vehicle", "list", "--limit"}, "flag needs an argument"},
		{[]string{"fail", "usage"}, "tool fail: give a VIN\nsee 'tool fail --help'"},
		{[]string{"need"}, `required flag(s) "token-file" not set`},
		{[]string{"completion", "tcsh"}, "tcsh"},
		// A key id is base64url: one in 64 starts with "-"; the error says how to pass it.
		{[]string{"admin", "vehicle", "add", "-JoMHuUjXb4PI00jJoyNbg"}, "such as a key id, goes after --"},
	}
	for _, tc := range tests {
		code, stdout, stderr := run(t, testTree(&ran{}), nil, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "--help'") || stdout != "" {
			t.Errorf("%q: exit %d, stderr %q, stdout %q; want 2 and %q", tc.args, code, stderr, stdout, tc.want)
		}
	}
}

// TestArgumentStartingWithDashAfterDoubleDash: after --, an argument that starts with - (a
// key id) is an argument, not a flag.
func TestArgumentStartingWithDashAfterDoubleDash(t *testing.T) {
	var got ran
	code, _, stderr := run(t, testTree(&got), nil, "admin", "vehicle", "add", "--", "-JoMHuUjXb4PI00jJoyNbg")
	if code != 0 || got.cmd != "add" || len(got.args) != 1 || got.args[0] != "-JoMHuUjXb4PI00jJoyNbg" {
		t.Fatalf("exit %d %q, ran %+v", code, stderr, got)
	}
}

func TestExecuteOtherErrorsExitOne(t *testing.T) {
	code, stdout, stderr := run(t, testTree(&ran{}), nil, "fail")
	if code != 1 || stderr != "tool fail: cannot reach the gateway\n" || stdout != "" {
		t.Errorf("exit %d, stderr %q, stdout %q", code, stderr, stdout)
	}
	code, _, stderr = run(t, testTree(&ran{}), nil, "fail", "code")
	if code != 3 || stderr != "" {
		t.Errorf("WithExitCode(3, nil): exit %d, stderr %q", code, stderr)
	}
}

func TestExecuteVersion(t *testing.T) {
	code, stdout, _ := run(t, testTree(&ran{}), nil, "--version")
	if code != 0 || !regexp.MustCompile(`^tool \S+ \(go1\.[0-9.]+.*, .+\)\n$`).MatchString(stdout) {
		t.Errorf("exit %d, %q", code, stdout)
	}
}

func TestExecuteCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		code, stdout, stderr := run(t, testTree(&ran{}), nil, "completion", shell)
		if code != 0 || !strings.Contains(stdout, "tool") || stderr != "" {
			t.Errorf("%s: exit %d, stderr %q, %d bytes", shell, code, stderr, len(stdout))
		}
	}
	// A binary without subcommands (the broker) has it too.
	leaf := NewRoot("leaf", "one command", "LEAF")
	leaf.Args = cobra.NoArgs
	leaf.RunE = func(*cobra.Command, []string) error { return nil }
	if code, stdout, stderr := run(t, leaf, nil, "completion", "bash"); code != 0 || !strings.Contains(stdout, "leaf") {
		t.Errorf("leaf: exit %d, %s", code, stderr)
	}
	if code, stdout, stderr := run(t, leaf, nil, "help"); code != 0 || !strings.Contains(stdout, "Usage:") {
		t.Errorf("leaf help: exit %d, %s", code, stderr)
	}
	if code, _, stderr := run(t, leaf, nil, "extra"); code != 2 || !strings.Contains(stderr, `unknown command "extra" for "leaf"`) {
		t.Errorf("leaf extra: exit %d, %s", code, stderr)
	}
}

func TestExecuteEnvironment(t *testing.T) {
	env := []string{"TOOL_SERVER=http://env", "TOOL_LIMIT=7", "TOOL_JSON=true", "TOOL_TOKEN_FILE=/t"}
	var got ran
	if code, _, stderr := run(t, testTree(&got), env, "admin", "vehicle", "list"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if got.server != "http://env" || got.limit != 7 || !got.json || !got.changed {
		t.Errorf("from the environment: %+v", got)
	}
	got = ran{}
	run(t, testTree(&got), env, "admin", "vehicle", "list", "--limit", "2", "--server", "http://flag")
	if got.server != "http://flag" || got.limit != 2 {
		t.Errorf("a flag given wins over its variable: %+v", got)
	}
	got = ran{}
	if code, _, stderr := run(t, testTree(&got), env, "need"); code != 0 || got.cmd != "need" {
		t.Errorf("a required flag set by its variable: exit %d, %s", code, stderr)
	}
	code, _, stderr := run(t, testTree(&ran{}), []string{"TOOL_LIMIT=lots"}, "admin", "vehicle", "list")
	if code != 2 || !strings.Contains(stderr, `TOOL_LIMIT="lots" (--limit)`) {
		t.Errorf("a bad variable: exit %d, %q", code, stderr)
	}
	_, stdout, _ := run(t, testTree(&ran{}), nil, "admin", "vehicle", "list", "--help")
	for _, want := range []string{"[$TOOL_SERVER]", "[$TOOL_JSON]", "[$TOOL_LIMIT]"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("help lacks %s:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "TOOL_HELP") {
		t.Errorf("help has a variable for --help:\n%s", stdout)
	}
}

func TestSetEnvAndNoEnv(t *testing.T) {
	var got ran
	root := testTree(&got)
	SetEnv(root, "server", "TOOL_ADMIN_SERVER", "TOOL_SERVER")
	list, _, _ := root.Find([]string{"admin", "vehicle", "list"})
	NoEnv(list, "limit")
	run(t, root, []string{"TOOL_ADMIN_SERVER=http://old", "TOOL_LIMIT=3"}, "admin", "vehicle", "list")
	if got.server != "http://old" || got.limit != 10 {
		t.Errorf("%+v", got)
	}
	_, stdout, _ := run(t, root, nil, "admin", "vehicle", "list", "--help")
	if !strings.Contains(stdout, "[$TOOL_ADMIN_SERVER]") || strings.Contains(stdout, "TOOL_LIMIT") {
		t.Errorf("help:\n%s", stdout)
	}
}

func TestCompletionFlagsHaveNoVariables(t *testing.T) {
	_, stdout, _ := run(t, testTree(&ran{}), nil, "completion", "bash", "--help")
	if !strings.Contains(stdout, "--no-descriptions") || strings.Contains(stdout, "TOOL_NO_DESCRIPTIONS") {
		t.Errorf("help:\n%s", stdout)
	}
}
