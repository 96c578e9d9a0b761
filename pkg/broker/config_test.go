package broker

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"telematics/pkg/sign"
)

func TestDefaultConfigIsValid(t *testing.T) {
	t.Parallel()
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.MQTTAddr != "127.0.0.1:1883" || c.WSAddr != "127.0.0.1:1882" || c.MaxPacketBytes != 64*1024 ||
		c.MaxTopicBytes != 256 || c.MaxConnsPerIdentity != 4 || c.MaxClientWritesPending != 128 {
		t.Errorf("defaults changed: %+v", c)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	c := Config{
		MQTTAddr:               "no-port",
		WSAddr:                 "127.0.0.1:",
		GatewayPubKeys:         []string{" "},
		MaxPacketBytes:         10,
		MaxTopicBytes:          10,
		MaxConnsPerIdentity:    0,
		MaxClientWritesPending: 0,
		MaxClients:             -1,
		ConnectTimeout:         0,
		SessionExpiry:          -time.Second,
	}
	err := c.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, key := range []string{"mqtt_addr", "ws_addr", "gateway_pubkeys", "max_packet_bytes", "max_topic_bytes",
		"max_conns_per_identity", "max_client_writes_pending", "max_clients", "connect_timeout", "session_expiry"} {
		if !strings.Contains(err.Error(), key+":") {
			t.Errorf("no problem reported for %s in:\n%v", key, err)
		}
	}

	same := DefaultConfig()
	same.WSAddr = same.MQTTAddr
	if err := same.Validate(); err == nil || !strings.Contains(err.Error(), "ws_addr") {
		t.Errorf("same address for both listeners: %v", err)
	}
	disabled := DefaultConfig()
	disabled.MQTTAddr, disabled.WSAddr = "", ""
	if err := disabled.Validate(); err != nil {
		t.Errorf("both listeners disabled: %v", err)
	}
}

// loadArgs runs LoadConfig as the broker command does: the flags of args, then environ built
// from env. (Help, stray arguments and flags in any position are the command's: broker/.)
func loadArgs(args []string, env map[string]string) (Config, error) {
	fs := pflag.NewFlagSet("broker", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	var environ []string
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	return LoadConfig(fs, environ)
}

func TestLoadConfigPrecedence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "broker.yaml")
	yamlText := `
mqtt_addr: "127.0.0.1:2001"
ws_addr: "127.0.0.1:2002"
gateway_pubkeys: [yaml.pub]
max_topic_bytes: 300
max_conns_per_identity: 7
connect_timeout: 3s
session_expiry: 10m
`
	if err := os.WriteFile(path, []byte(yamlText), 0o600); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		args []string
		env  map[string]string
		want func(*Config)
	}{
		{"yaml", []string{"--config", path}, nil, func(c *Config) {}},
		{"env over yaml", []string{"--config", path},
			map[string]string{EnvMQTTAddr: "127.0.0.1:3001", EnvWSAddr: "off", EnvGatewayPubKey: "a.pub, b.pub"},
			func(c *Config) {
				c.MQTTAddr, c.WSAddr, c.GatewayPubKeys = "127.0.0.1:3001", "", []string{"a.pub", "b.pub"}
			}},
		{"flags over env", []string{"--config", path, "--mqtt-addr", "127.0.0.1:4001", "--gateway-pubkey", "f1.pub", "--gateway-pubkey", "f2.pub"},
			map[string]string{EnvMQTTAddr: "127.0.0.1:3001", EnvGatewayPubKey: "a.pub"},
			func(c *Config) {
				c.MQTTAddr, c.GatewayPubKeys = "127.0.0.1:4001", []string{"f1.pub", "f2.pub"}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := DefaultConfig()
			want.MQTTAddr, want.WSAddr, want.GatewayPubKeys = "127.0.0.1:2001", "127.0.0.1:2002", []string{"yaml.pub"}
			want.MaxTopicBytes, want.MaxConnsPerIdentity = 300, 7
			want.ConnectTimeout, want.SessionExpiry = 3*time.Second, 10*time.Minute
			tc.want(&want)
			got, err := loadArgs(tc.args, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}

	// Without a file: defaults, then flags.
	got, err := loadArgs([]string{"--gateway-pubkey", "k.pub", "--ws-addr", "off"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.GatewayPubKeys, want.WSAddr = []string{"k.pub"}, ""
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	typo := write("typo.yaml", "mqtt_adr: x\n")
	invalid := write("invalid.yaml", "max_topic_bytes: 1\nmax_packet_bytes: 1\ngateway_pubkeys: [k.pub]\n")
	empty := write("empty.yaml", "")

	for _, c := range []struct {
		name string
		args []string
		want string // in the error
		is   error
	}{
		{"no key", nil, "", ErrNoGatewayKey},
		{"no key, empty file", []string{"--config", empty}, "", ErrNoGatewayKey},
		{"unknown flag", []string{"--nope"}, "nope", nil},
		{"missing file", []string{"--config", filepath.Join(dir, "absent.yaml")}, "absent.yaml", nil},
		{"unknown yaml key", []string{"--config", typo}, "mqtt_adr", nil},
		{"invalid values, all named", []string{"--config", invalid}, "max_packet_bytes", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := loadArgs(c.args, nil)
			switch {
			case err == nil:
				t.Fatal("no error")
			case c.is != nil && !errors.Is(err, c.is):
				t.Fatalf("error %v, want %v", err, c.is)
			case !strings.Contains(err.Error(), c.want):
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
			if c.name == "invalid values, all named" && !strings.Contains(err.Error(), "max_topic_bytes") {
				t.Errorf("error %q does not name every key", err)
			}
		})
	}
}

func TestLoadKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var paths []string
	for i := 0; i < 2; i++ {
		s, err := sign.Generate()
		if err != nil {
			t.Fatal(err)
		}
		pemBytes, err := sign.PublicPEM(s.Public())
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "gateway"+string(rune('0'+i))+".pub")
		if err := os.WriteFile(p, pemBytes, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	keys, err := LoadKeys(paths)
	if err != nil || len(keys) != 2 {
		t.Fatalf("LoadKeys: %d keys, %v", len(keys), err)
	}
	if _, err := LoadKeys(nil); !errors.Is(err, ErrNoGatewayKey) {
		t.Errorf("no paths: %v", err)
	}
	garbage := filepath.Join(dir, "garbage.pub")
	if err := os.WriteFile(garbage, []byte("not pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeys([]string{paths[0], garbage}); err == nil || !strings.Contains(err.Error(), "garbage.pub") {
		t.Errorf("garbage key file: %v", err)
	}
}
