package server

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"telematics/gateway/console"
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

// The console: section reaches the console's Config from the file and from the environment.
func TestConsoleConfigFromFileAndEnv(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "g.yaml")
	os.WriteFile(path, []byte("console:\n  alert_revocation_after: 2m\n  idle_timeout: 10m\n"), 0o600)
	env := map[string]string{"GATEWAY_CONSOLE_ALERT_FAILURE_BURST": "3", "GATEWAY_CONSOLE_IDLE_TIMEOUT": "20m"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := ParseServeFlags([]string{"--config", path}, os.Stderr, lookup)
	if err != nil {
		t.Fatal(err)
	}
	cc, def := cfg.Console.config(), console.DefaultConfig()
	if cc.AlertRevocationAfter != 2*time.Minute || cc.AlertFailureBurst != 3 || cc.IdleTimeout != 20*time.Minute {
		t.Fatalf("console settings not applied: %+v", cc)
	}
	if cc.AbsoluteTimeout != def.AbsoluteTimeout || cc.AlertTelemetryAfter != def.AlertTelemetryAfter ||
		cc.WatchInterval != def.WatchInterval || cc.KeepAlive != def.KeepAlive {
		t.Fatalf("unset console settings are not the defaults: %+v", cc)
	}
}

func TestConsoleConfigRefusesBadValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		set  func(*ConsoleConfig)
		key  string
	}{
		{"zero idle", func(c *ConsoleConfig) { c.IdleTimeout = 0 }, "console.idle_timeout"},
		{"negative absolute", func(c *ConsoleConfig) { c.AbsoluteTimeout = -time.Hour }, "console.absolute_timeout"},
		{"absolute below idle", func(c *ConsoleConfig) { c.IdleTimeout, c.AbsoluteTimeout = time.Hour, time.Minute }, "console.absolute_timeout"},
		{"zero revocation", func(c *ConsoleConfig) { c.AlertRevocationAfter = 0 }, "console.alert_revocation_after"},
		{"zero telemetry", func(c *ConsoleConfig) { c.AlertTelemetryAfter = 0 }, "console.alert_telemetry_after"},
		{"zero burst", func(c *ConsoleConfig) { c.AlertFailureBurst = 0 }, "console.alert_failure_burst"},
	} {
		cfg := DefaultConfig()
		tc.set(&cfg.Console)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%s: error does not name %s: %v", tc.name, tc.key, err)
		}
	}
	// From the environment too: a bad duration names its variable, a bad value its key.
	cfg := DefaultConfig()
	err := cfg.LoadEnv(func(k string) (string, bool) {
		if k == "GATEWAY_CONSOLE_ALERT_REVOCATION_AFTER" {
			return "soon", true
		}
		return "", false
	})
	if err == nil || !strings.Contains(err.Error(), "GATEWAY_CONSOLE_ALERT_REVOCATION_AFTER") {
		t.Fatalf("bad env value not reported: %v", err)
	}
	path := filepath.Join(t.TempDir(), "g.yaml")
	os.WriteFile(path, []byte("console:\n  alert_failure_burst: 0\n"), 0o600)
	if _, err := ParseServeFlags([]string{"--config", path}, os.Stderr, func(string) (string, bool) { return "", false }); err == nil ||
		!strings.Contains(err.Error(), "console.alert_failure_burst") {
		t.Fatalf("bad file value not refused naming the key: %v", err)
	}
}
