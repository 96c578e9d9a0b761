package cmdline

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzDecodeYAML decodes arbitrary configuration files (gateway.yaml, broker.yaml and
// vehicle-sim.yaml go through DecodeYAML): no panic, an error for a document it cannot take,
// and a document it takes into a config survives a round trip through yaml.Marshal
// (marshal, decode, marshal gives the same text).
func FuzzDecodeYAML(f *testing.F) {
	shipped, _ := filepath.Glob(filepath.Join("..", "..", "configs", "*.yaml"))
	for _, p := range shipped {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("name: x\ncommands:\n  result_grace: 5s\n  max: 3\nlist:\n  - port: 1\n  - port: 2\n"))
	f.Add([]byte("a: &a [*a, *a]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b, *b]\n"))
	f.Add([]byte("commands: {resutl_grace: 5s}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var anything map[string]any
		_ = DecodeYAML(b, &anything)
		var c testConfig
		if err := DecodeYAML(b, &c); err != nil {
			return
		}
		out, err := yaml.Marshal(&c)
		if err != nil {
			t.Fatalf("marshal %+v: %v", c, err)
		}
		var c2 testConfig
		if err := DecodeYAML(out, &c2); err != nil {
			t.Fatalf("round trip of %q via %q: %v", b, out, err)
		}
		if out2, _ := yaml.Marshal(&c2); !bytes.Equal(out, out2) {
			t.Fatalf("round trip of %q:\n%s\n%s", b, out, out2)
		}
	})
}
