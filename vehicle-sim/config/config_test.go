package config

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"telematics/pkg/cmdline"
)

// load runs a `run`-like command with args and the variables vars, as vehicle-sim does
// (cmdline.ExecuteWithEnv binds the SIM_* variables to the flags), and returns what Load made.
// Help (no run) is flag.ErrHelp; a refused command line is an error holding what it printed.
func load(t *testing.T, args []string, vars map[string]string) (Config, error) {
	t.Helper()
	cfg := Default()
	var path string
	var loadErr error
	ran := false
	run := &cobra.Command{Use: "run", Args: NoArgs, RunE: func(cmd *cobra.Command, _ []string) error {
		ran = true
		loadErr = Load(cmd.Flags(), path, &cfg)
		return nil
	}}
	cfg.Flags(run.Flags(), &path)
	run.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return cmdline.UsageError("%v", FlagError(cmd.Flags(), err))
	})
	root := cmdline.NewRoot("vehicle-sim", "test", EnvPrefix)
	root.AddCommand(run)
	var environ []string
	for k, v := range vars {
		environ = append(environ, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	code := cmdline.ExecuteWithEnv(context.Background(), root, append([]string{"run"}, args...), environ, strings.NewReader(""), &stdout, &stderr)
	switch {
	case code != 0:
		return Config{}, errors.New(stderr.String())
	case !ran:
		return Config{}, flag.ErrHelp
	}
	return cfg, loadErr
}

func TestLayers(t *testing.T) {
	dir := t.TempDir()
	yml := filepath.Join(dir, "sim.yaml")
	os.WriteFile(yml, []byte("broker: tcp://yaml:1883\ndata: /yaml\nrun:\n  cars: 5\n  telemetry_interval: 3s\n  connect_rate: 50\n"), 0o600)

	tests := []struct {
		name string
		args []string
		env  map[string]string
		want func(Config) bool
	}{
		{"defaults", nil, nil, func(c Config) bool { return c == Default() }},
		{"yaml over defaults", []string{"--config", yml}, nil, func(c Config) bool {
			return c.Broker == "tcp://yaml:1883" && c.DataDir == "/yaml" && c.Run.Cars == 5 &&
				c.Run.TelemetryInterval == 3*time.Second && c.Run.ConnectRate == 50 && c.Gateway == Default().Gateway
		}},
		{"config from env", nil, map[string]string{"SIM_CONFIG": yml}, func(c Config) bool { return c.Broker == "tcp://yaml:1883" }},
		{"env over yaml", []string{"--config", yml}, map[string]string{"SIM_BROKER": "tcp://env:1", "SIM_CARS": "7"}, func(c Config) bool {
			return c.Broker == "tcp://env:1" && c.Run.Cars == 7 && c.DataDir == "/yaml"
		}},
		{"flags over env", []string{"--config", yml, "--broker", "tcp://flag:2", "--telemetry-interval", "250ms"},
			map[string]string{"SIM_BROKER": "tcp://env:1"}, func(c Config) bool {
				return c.Broker == "tcp://flag:2" && c.Run.TelemetryInterval == 250*time.Millisecond && c.Run.Cars == 5
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(t, tc.args, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(c) {
				t.Fatalf("got %+v", c)
			}
		})
	}
}

func TestLoadErrorsNameTheSetting(t *testing.T) {
	dir := t.TempDir()
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("brokr: tcp://x:1\n"), 0o600)
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"bad env number", nil, map[string]string{"SIM_CARS": "many"}, "SIM_CARS"},
		{"bad env number names the setting", nil, map[string]string{"SIM_CARS": "many"}, "run.cars"},
		{"bad flag duration", []string{"--telemetry-interval", "often"}, nil, "--telemetry-interval: run.telemetry_interval"},
		{"unknown yaml key", []string{"--config", typo}, nil, "brokr"},
		{"missing config file", []string{"--config", filepath.Join(dir, "nope.yaml")}, nil, "nope.yaml"},
		{"stray argument", []string{"extra"}, nil, "unexpected arguments: extra"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.args, tc.env)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	c := Default()
	c.Broker = "localhost"
	c.Gateway = "ftp://x"
	c.LogLevel = "loud"
	c.Run.ConnectRate = 0
	c.Run.TelemetryInterval = 0
	c.Run.Cars = -1
	c.LinkAddr = "0.0.0.0:1884"
	err := c.Validate()
	for _, key := range []string{"broker:", "gateway:", "log_level:", "link_addr:", "run.connect_rate:", "run.telemetry_interval:", "run.cars:"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("validation error does not name %s: %v", key, err)
		}
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
}

func TestValidateRun(t *testing.T) {
	c := Default()
	if err := c.ValidateRun(); !errors.Is(err, ErrNoFleet) {
		t.Errorf("no fleet: %v", err)
	}
	c.Run.Fleet, c.Run.Cars = "fleet.json", 3
	if err := c.ValidateRun(); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("both: %v", err)
	}
	c.Run.Cars = 0
	if err := c.ValidateRun(); err != nil {
		t.Errorf("fleet only: %v", err)
	}
}

func TestHelp(t *testing.T) {
	if _, err := load(t, []string{"-h"}, nil); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("got %v", err)
	}
}

// TestExampleFileIsTheDefaults keeps the documented file and Default in step.
func TestExampleFileIsTheDefaults(t *testing.T) {
	c, err := load(t, []string{"--config", "../../configs/vehicle-sim.yaml"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c != Default() {
		t.Fatalf("vehicle-sim.yaml %+v\nDefault()       %+v", c, Default())
	}
	b, _ := os.ReadFile("../../configs/vehicle-sim.yaml")
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	var path string
	c.Flags(fs, &path)
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "config" {
			return
		}
		env := cmdline.EnvName(EnvPrefix, f.Name)
		if !strings.Contains(string(b), env) || !strings.Contains(string(b), "--"+f.Name) {
			t.Errorf("vehicle-sim.yaml does not document %s / --%s", env, f.Name)
		}
	})
}

func TestLinkAddr(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    string
		enabled bool
		invalid bool
	}{
		{"default", nil, nil, "127.0.0.1:1884", true, false},
		{"flag", []string{"--link-addr", "127.0.0.1:0"}, nil, "127.0.0.1:0", true, false},
		{"env", nil, map[string]string{"SIM_LINK_ADDR": "[::1]:2000"}, "[::1]:2000", true, false},
		{"flag over env", []string{"--link-addr", "localhost:3"}, map[string]string{"SIM_LINK_ADDR": "127.0.0.1:4"}, "localhost:3", true, false},
		{"off", []string{"--link-addr", "off"}, nil, "off", false, false},
		{"off by env", nil, map[string]string{"SIM_LINK_ADDR": "off"}, "off", false, false},
		{"empty flag", []string{"--link-addr", ""}, nil, "", true, true}, // off is the one spelling
		{"empty by env", nil, map[string]string{"SIM_LINK_ADDR": ""}, "", true, true},
		{"every interface", []string{"--link-addr", ":1884"}, nil, ":1884", true, true},
		{"lan address", nil, map[string]string{"SIM_LINK_ADDR": "192.168.1.5:1884"}, "192.168.1.5:1884", true, true},
		{"no port", []string{"--link-addr", "127.0.0.1"}, nil, "127.0.0.1", true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(t, tc.args, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if c.LinkAddr != tc.want || c.LinkEnabled() != tc.enabled {
				t.Fatalf("link_addr %q enabled %v", c.LinkAddr, c.LinkEnabled())
			}
			err = c.Validate()
			if tc.invalid != (err != nil) {
				t.Fatalf("Validate: %v", err)
			}
			if err != nil && !strings.Contains(err.Error(), "link_addr:") {
				t.Errorf("error does not name link_addr: %v", err)
			}
			if tc.want == "" && (err == nil || !strings.Contains(err.Error(), "write off")) {
				t.Errorf("an empty link_addr does not say to write off: %v", err)
			}
		})
	}
}
