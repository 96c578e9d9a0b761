package server

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The shipped configs/gateway.yaml must state exactly the defaults, so that reading it changes
// nothing.
func TestShippedConfigMatchesDefaults(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	if err := cfg.LoadFile(filepath.Join("..", "..", "configs", "gateway.yaml")); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, DefaultConfig()) {
		t.Fatalf("configs/gateway.yaml differs from DefaultConfig():\n file: %+v\n code: %+v", cfg, DefaultConfig())
	}
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "g.yaml")
	os.WriteFile(path, []byte("http_addr: 127.0.0.1:9000\ndata: /from/file\ncommands:\n  rate_burst: 7\n"), 0o600)
	env := map[string]string{"GATEWAY_DATA": "/from/env", "GATEWAY_RESULT_GRACE": "3s"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := ParseServeFlags([]string{"--config", path, "--mqtt-addr", "127.0.0.1:1999"}, os.Stderr, lookup)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPAddr != "127.0.0.1:9000" || cfg.Data != "/from/env" || cfg.MQTTAddr != "127.0.0.1:1999" ||
		cfg.Commands.RateBurst != 7 || cfg.Commands.ResultGrace != 3*time.Second {
		t.Fatalf("precedence wrong: %+v", cfg)
	}
}

func TestConfigValidateNamesEveryBadKey(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.HTTPAddr = "nonsense"
	cfg.LogLevel = "loud"
	cfg.Commands.Shards = 0
	cfg.ExternalBroker = "http://x"
	err := cfg.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, key := range []string{"http_addr", "log_level", "commands.shards", "external_broker"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s: %v", key, err)
		}
	}
}

func TestConfigRejectsUnknownKeys(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "g.yaml")
	os.WriteFile(path, []byte("htp_addr: 127.0.0.1:1\n"), 0o600)
	cfg := DefaultConfig()
	if err := cfg.LoadFile(path); err == nil || !strings.Contains(err.Error(), "htp_addr") {
		t.Fatalf("typo not reported: %v", err)
	}
}

func TestBadEnvValueReported(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	err := cfg.LoadEnv(func(k string) (string, bool) {
		if k == "GATEWAY_APP_TOKEN_TTL" {
			return "forever", true
		}
		return "", false
	})
	if err == nil || !strings.Contains(err.Error(), "GATEWAY_APP_TOKEN_TTL") {
		t.Fatalf("bad env value not reported: %v", err)
	}
}
