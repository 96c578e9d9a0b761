package cmdline

import (
	"flag"
	"io"
	"slices"
	"testing"
)

func TestInterleaved(t *testing.T) {
	tests := []struct {
		args []string
		pos  []string
		json bool
	}{
		{[]string{"add", "VIN", "--json"}, []string{"add", "VIN"}, true},
		{[]string{"--json", "add", "VIN"}, []string{"add", "VIN"}, true},
		{[]string{"revoke", "VIN", "--", "-AbC"}, []string{"revoke", "VIN", "-AbC"}, false},
		{[]string{"revoke", "--json", "VIN", "--", "-AbC", "--json"}, []string{"revoke", "VIN", "-AbC", "--json"}, true},
		{[]string{"--", "--json"}, []string{"--json"}, false},
		{nil, nil, false},
	}
	for _, tc := range tests {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		asJSON := fs.Bool("json", false, "")
		pos, err := Interleaved(fs, tc.args)
		if err != nil || !slices.Equal(pos, tc.pos) || *asJSON != tc.json {
			t.Errorf("%q: got %q json=%v %v, want %q json=%v", tc.args, pos, *asJSON, err, tc.pos, tc.json)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if _, err := Interleaved(fs, []string{"revoke", "VIN", "-AbC"}); err == nil {
		t.Error("an id starting with - and no -- must be an error (an unknown flag), not taken silently")
	}
}
