package cmdline

import (
	"strings"
	"testing"
)

// TestValueErrorsSayWhatIsWanted: a value of the wrong kind, in the file or in a variable, says
// what the setting wants, not yaml.v3's tags and Go's type names ("cannot unmarshal !!str `xx`
// into time.Duration").
func TestValueErrorsSayWhatIsWanted(t *testing.T) {
	tests := []struct{ name, doc, want string }{
		{"duration", "commands:\n  result_grace: 5sec\n", `line 2: commands.result_grace: cannot unmarshal "5sec": want a duration such as 30s, 5m or 2h`},
		{"whole number", "commands:\n  max: many\n", `line 2: commands.max: cannot unmarshal "many": want a whole number`},
		{"list for a number", "commands:\n  max: [1]\n", `line 2: commands.max: cannot unmarshal a list: want a whole number`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c testConfig
			err := DecodeYAML([]byte(tc.doc), &c)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got %v\nwant %s", err, tc.want)
			}
		})
	}
	var c testConfig
	err := ApplyEnv("T", &c, []string{"T_COMMANDS_RESULT_GRACE=xx", "T_COMMANDS_MAX=x"})
	for _, w := range []string{`T_COMMANDS_RESULT_GRACE="xx": cannot unmarshal "xx": want a duration`, `T_COMMANDS_MAX="x": cannot unmarshal "x": want a whole number`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("ApplyEnv: %v, want %s", err, w)
		}
	}
	if err != nil && (strings.Contains(err.Error(), "!!") || strings.Contains(err.Error(), "time.Duration")) {
		t.Errorf("ApplyEnv: %v names YAML tags or Go types", err)
	}
}
