package cmdline

import (
	"strings"
	"testing"
	"time"
)

type testConfig struct {
	Name     string `yaml:"name"`
	Commands struct {
		ResultGrace time.Duration `yaml:"result_grace"`
		Max         int           `yaml:"max"`
	} `yaml:"commands"`
	List []struct {
		Port int `yaml:"port"`
	} `yaml:"list"`
}

func TestDecodeYAMLNamesTheKey(t *testing.T) {
	tests := []struct {
		name, doc string
		want      []string // substrings of the error; nil: no error
	}{
		{"empty", "", nil},
		{"comments only", "# nothing\n", nil},
		{"valid", "name: x\ncommands:\n  result_grace: 5s\n", nil},
		{"unknown nested key", "commands:\n  resutl_grace: 5s\n", []string{"line 2: commands.resutl_grace: unknown key"}},
		{"unknown top key", "nmae: x\n", []string{"line 1: nmae: unknown key"}},
		{"bad duration", "commands:\n  result_grace: 5sec\n", []string{"line 2: commands.result_grace: cannot unmarshal", "5sec"}},
		{"two errors", "name: x\ncommands:\n  max: many\n  bogus: 1\n", []string{"line 3: commands.max:", "line 4: commands.bogus: unknown key"}},
		{"in a list", "list:\n  - port: x\n", []string{"line 2: list[0].port:"}},
		{"not YAML", "commands: [\n", []string{"line"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c testConfig
			err := DecodeYAML([]byte(tc.doc), &c)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "testConfig") || strings.Contains(err.Error(), "not found in type") {
				t.Errorf("error %q names a Go type", err)
			}
		})
	}
}
