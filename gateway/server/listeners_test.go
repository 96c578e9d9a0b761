package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `gateway serve --ws-addr ""` bound the default port while the config file said "" disables:
// off is the one spelling of a disabled listener, an empty value is an error that says so.
func TestWSAddrOffIsTheOneSpellingOfDisabled(t *testing.T) {
	t.Parallel()
	none := func(string) (string, bool) { return "", false }
	cfg, err := ParseServeFlags([]string{"--ws-addr", "off"}, os.Stderr, none)
	if err != nil || cfg.WSAddr != "" {
		t.Fatalf("--ws-addr off: %q %v", cfg.WSAddr, err)
	}
	if _, err := ParseServeFlags([]string{"--ws-addr", ""}, os.Stderr, none); err == nil || !strings.Contains(err.Error(), "write off") {
		t.Fatalf("--ws-addr \"\": %v", err)
	}
	path := filepath.Join(t.TempDir(), "g.yaml")
	os.WriteFile(path, []byte("ws_addr: \"\"\n"), 0o600)
	if _, err := ParseServeFlags([]string{"--config", path}, os.Stderr, none); err == nil || !strings.Contains(err.Error(), "write off") {
		t.Fatalf("ws_addr: \"\" in the file: %v", err)
	}
	env := func(k string) (string, bool) { return "off", k == "GATEWAY_WS_ADDR" }
	if cfg, err := ParseServeFlags(nil, os.Stderr, env); err != nil || cfg.WSAddr != "" {
		t.Fatalf("GATEWAY_WS_ADDR=off: %q %v", cfg.WSAddr, err)
	}
}
