package cmdline

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// loaderConfig is a configuration like the binaries': nested sections, durations, lists.
type loaderConfig struct {
	Listeners struct {
		TCP string `yaml:"tcp"`
		WS  string `yaml:"ws"`
	} `yaml:"listeners"`
	TwoFA struct {
		Mode   string        `yaml:"mode"`
		Window time.Duration `yaml:"window"`
	} `yaml:"twofa"`
	Keys    []string `yaml:"keys"`
	Ports   []int    `yaml:"ports"`
	Verbose bool     `yaml:"verbose"`
	Max     int      `yaml:"max"`
	Limits  *struct {
		Rate float64 `yaml:"rate"`
	} `yaml:"limits"`
	Hidden string `yaml:"-"`
	Extra  map[string]string
	Rate   float64 `yaml:"rate_per_minute" env:"TOOL_RATE"`
	Secret string  `yaml:"secret" env:"-"`
}

func defaultLoaderConfig() loaderConfig {
	var c loaderConfig
	c.Listeners.TCP = "127.0.0.1:1883"
	c.Listeners.WS = "127.0.0.1:1882"
	c.TwoFA.Mode = "optional"
	c.TwoFA.Window = 30 * time.Second
	c.Max = 4
	return c
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFileKeepsDefaultsAndIsStrict(t *testing.T) {
	c := defaultLoaderConfig()
	p := writeFile(t, "listeners:\n  ws: off\ntwofa:\n  window: 1m\n")
	if err := LoadFile(p, &c); err != nil {
		t.Fatal(err)
	}
	if c.Listeners.WS != "off" || c.Listeners.TCP != "127.0.0.1:1883" || c.TwoFA.Window != time.Minute || c.TwoFA.Mode != "optional" {
		t.Errorf("got %+v", c)
	}
	err := LoadFile(writeFile(t, "twofa:\n  mode: required\n  windwo: 1m\n"), &c)
	if err == nil || !strings.Contains(err.Error(), "line 3: twofa.windwo: unknown key") || !strings.Contains(err.Error(), "c.yaml") {
		t.Errorf("unknown key: %v", err)
	}
	if err := LoadFile(filepath.Join(t.TempDir(), "missing.yaml"), &c); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

// The issue: "A YAML indentation error on line 81 is reported at line 8" (yaml.v3 names the
// line where the enclosing block starts).
func TestLoadFileIndentationErrorNamesItsLine(t *testing.T) {
	var b strings.Builder
	b.WriteString("# the broker\n\n\n\n\n\nmax: 4\nlisteners:\n  tcp: \"127.0.0.1:1883\"\n")
	for i := 10; i < 81; i++ {
		fmt.Fprintf(&b, "  # comment on line %d\n", i)
	}
	b.WriteString("   ws: off\n") // line 81: one space too many
	b.WriteString("verbose: true\n")
	c := defaultLoaderConfig()
	err := LoadFile(writeFile(t, b.String()), &c)
	if err == nil || !strings.Contains(err.Error(), "line 81:") || !strings.Contains(err.Error(), "against listeners.tcp on line 9") {
		t.Fatalf("got %v, want line 81", err)
	}

	tests := []struct {
		name, doc, want string
	}{
		{"over-indented key", "max: 1\nlisteners:\n  tcp: \"x\"\n\n   ws: y\n", "line 5: did not find expected key (check its indentation against listeners.tcp on line 3)"},
		{"over-indented first key of a block", "broker: b\nrun:\n   fleet: x\n  cars: 1\n", "line 4: did not find expected key (check its indentation against run.fleet on line 3)"},
		{"under-indented key", "max: 1\nlisteners:\n  tcp: x\n  ws: y\n bad: z\n", "line 5: did not find expected key"},
		{"list item out of line", "max: 1\nkeys:\n    - a\n  - b\n", "line 4:"},
		{"mapping in a plain value", "max: 1\nlisteners:\n  tcp: x\n   ws: y\n", "line 4: mapping values are not allowed"},
		{"tab", "max: 1\nlisteners:\n\ttcp: x\n", "line 3:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := defaultLoaderConfig()
			err := DecodeYAML([]byte(tc.doc), &c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestApplyEnv(t *testing.T) {
	c := defaultLoaderConfig()
	env := []string{
		"TOOL_LISTENERS_WS=off",
		"TOOL_TWOFA_MODE=required",
		"TOOL_TWOFA_WINDOW=90s",
		"TOOL_KEYS=a.pub, b.pub",
		"TOOL_PORTS=1,2",
		"TOOL_VERBOSE=true",
		"TOOL_LIMITS_RATE=2.5",
		"TOOL_HIDDEN=x",
		"OTHER_MAX=9",
		"TOOL_RATE=60",
		"TOOL_RATE_PER_MINUTE=1",
		"TOOL_SECRET=x",
	}
	if err := ApplyEnv("TOOL", &c, env); err != nil {
		t.Fatal(err)
	}
	if c.Listeners.WS != "off" || c.Listeners.TCP != "127.0.0.1:1883" || c.TwoFA.Mode != "required" ||
		c.TwoFA.Window != 90*time.Second || fmt.Sprint(c.Keys) != "[a.pub b.pub]" || fmt.Sprint(c.Ports) != "[1 2]" ||
		!c.Verbose || c.Max != 4 || c.Limits == nil || c.Limits.Rate != 2.5 || c.Hidden != "" ||
		c.Rate != 60 || c.Secret != "" {
		t.Errorf("got %+v", c)
	}

	c = defaultLoaderConfig()
	if err := ApplyEnv("TOOL_", &c, []string{"TOOL_MAX=5"}); err != nil || c.Max != 5 || c.Limits != nil {
		t.Errorf("prefix with underscore: %v %+v", err, c)
	}
	err := ApplyEnv("TOOL", &c, []string{"TOOL_MAX=many", "TOOL_TWOFA_WINDOW=5sec"})
	if err == nil || !strings.Contains(err.Error(), `TOOL_MAX="many"`) || !strings.Contains(err.Error(), `TOOL_TWOFA_WINDOW="5sec"`) {
		t.Errorf("bad values: %v", err)
	}

	want := "[TOOL_LISTENERS_TCP TOOL_LISTENERS_WS TOOL_TWOFA_MODE TOOL_TWOFA_WINDOW TOOL_KEYS TOOL_PORTS TOOL_VERBOSE TOOL_MAX TOOL_LIMITS_RATE TOOL_RATE]"
	if got := fmt.Sprint(EnvVars("TOOL", &c)); got != want {
		t.Errorf("EnvVars: %s", got)
	}
}
