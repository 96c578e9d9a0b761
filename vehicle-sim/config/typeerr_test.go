package config

import (
	"strings"
	"testing"
)

// TestBadValueSaysWhatIsWanted: a setting's flag or variable of the wrong kind says what it
// wants, as the gateway's and the broker's do, not Go's parser ("strconv.ParseFloat: parsing
// "abc": invalid syntax").
func TestBadValueSaysWhatIsWanted(t *testing.T) {
	tests := []struct {
		name string
		args []string
		vars map[string]string
		want string
	}{
		{"number flag", []string{"--connect-rate", "abc"}, nil, `--connect-rate: run.connect_rate: cannot parse "abc": want a number`},
		{"whole number variable", nil, map[string]string{"SIM_CARS": "many"}, `run.cars: cannot parse "many": want a whole number`},
		{"duration flag", []string{"--telemetry-interval", "5sec"}, nil, `run.telemetry_interval: cannot parse "5sec": want a duration`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.args, tc.vars)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "strconv") {
				t.Fatalf("got %v\nwant %s", err, tc.want)
			}
		})
	}
}
