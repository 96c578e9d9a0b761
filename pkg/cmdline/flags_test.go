package cmdline

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

var loaderFlags = []ConfigFlag{
	{Key: "listeners.ws", Flag: "ws-addr", Usage: "WebSocket listen `address`, or off"},
	{Key: "twofa.window", Usage: "TOTP window"},
	{Key: "keys", Flag: "key", Usage: "public key `file`; repeat it"},
	{Key: "verbose", Usage: "log more"},
	{Key: "max", Usage: "most of them"},
	{Key: "limits.rate", Usage: "rate"},
}

// loaderCmd is a command that loads loaderConfig as the binaries do: defaults, YAML (none
// here), environment, flags.
func loaderCmd(got *loaderConfig) *cobra.Command {
	root := NewRoot("tool", "test", "TOOL")
	def := defaultLoaderConfig()
	AddConfigFlags(root.Flags(), &def, loaderFlags...)
	root.RunE = func(cmd *cobra.Command, _ []string) error {
		c := defaultLoaderConfig()
		if err := ApplyFlags(cmd.Flags(), &c, loaderFlags...); err != nil {
			return err
		}
		*got = c
		return nil
	}
	return root
}

func TestConfigFlags(t *testing.T) {
	var got loaderConfig
	code, _, stderr := run(t, loaderCmd(&got), nil, "--ws-addr", "off", "--window=1m", "--key", "a.pub", "--key", "b.pub,c.pub", "--verbose", "--rate", "0.5")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if got.Listeners.WS != "off" || got.Listeners.TCP != "127.0.0.1:1883" || got.TwoFA.Window != time.Minute ||
		!slices.Equal(got.Keys, []string{"a.pub", "b.pub", "c.pub"}) || !got.Verbose || got.Max != 4 ||
		got.Limits == nil || got.Limits.Rate != 0.5 {
		t.Errorf("got %+v", got)
	}

	got = loaderConfig{}
	run(t, loaderCmd(&got), nil)
	if want := defaultLoaderConfig(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("no flag given changed the config: %+v", got)
	}

	got = loaderConfig{}
	if code, _, stderr := run(t, loaderCmd(&got), []string{"TOOL_MAX=9", "TOOL_WINDOW=2m"}); code != 0 || got.Max != 9 || got.TwoFA.Window != 2*time.Minute {
		t.Errorf("from the flags' variables: exit %d %s, %+v", code, stderr, got)
	}

	code, _, stderr = run(t, loaderCmd(&got), nil, "--window", "5sec")
	if code != 2 || !strings.Contains(stderr, `invalid argument "5sec" for "--window"`) {
		t.Errorf("bad duration: exit %d, %s", code, stderr)
	}

	_, stdout, _ := run(t, loaderCmd(&got), nil, "--help")
	for _, want := range []string{
		"--ws-addr address", `(default "127.0.0.1:1882")`, "[$TOOL_WS_ADDR]",
		"--window duration", "(default 30s)",
		"--key file", "--verbose ", "--max int", "(default 4)", "--rate float",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("help lacks %q:\n%s", want, stdout)
		}
	}
}

func TestWalk(t *testing.T) {
	var paths []string
	Walk(testTree(&ran{}), func(_ *cobra.Command, path []string) {
		paths = append(paths, strings.Join(path, " "))
	})
	want := []string{"", "admin", "admin vehicle", "admin vehicle add", "admin vehicle list", "fail", "need"}
	if !slices.Equal(paths, want) {
		t.Errorf("got %q", paths)
	}
	// Every command's help exits 0, the use Walk is for.
	Walk(testTree(&ran{}), func(_ *cobra.Command, path []string) {
		if code, _, stderr := run(t, testTree(&ran{}), nil, append(path, "--help")...); code != 0 {
			t.Errorf("%q --help: exit %d, %s", path, code, stderr)
		}
	})
}
