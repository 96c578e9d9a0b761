// Package config is vehicle-sim's configuration: every setting with its default (Default), read
// from an optional YAML file (cmdline.LoadFile), then SIM_* environment variables, then
// command-line flags, each layer overriding the one before; Validate reports every problem at
// once, naming the setting.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"telematics/pkg/cmdline"
	"telematics/pkg/tlsconf"
	"telematics/pkg/vehicle/link"
)

// Config holds every vehicle-sim setting. The YAML keys are the `yaml` tags (run settings
// under `run:`); the flag of each is registered by Flags, its variable is SIM_FLAG_NAME.
type Config struct {
	// Broker is the MQTT broker the cars (and phones) connect to.
	Broker string `yaml:"broker"`
	// DataDir holds vehicle-sim's bbolt file; one process per directory.
	DataDir string `yaml:"data"`
	// Gateway is the gateway's HTTP API, for provisioning cars and for the app.
	Gateway string `yaml:"gateway"`
	// TokenFile holds the gateway admin token (written by `gateway serve` into its data dir).
	TokenFile string `yaml:"token_file"`
	// CA is the PEM CA certificate that verifies an https:// gateway and an ssl:// or wss://
	// broker (the gateway's DATA/ca.pem). "": the cars' credentials' ca_pem for the broker,
	// the system's roots otherwise.
	CA string `yaml:"ca"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LinkAddr is the local link (simulated BLE/NFC) of the cars: `vehicle-sim run` serves it
	// for all its cars on this loopback address; off disables it (an empty value is refused:
	// off is the one spelling, as for the gateway's and the broker's listeners).
	LinkAddr string `yaml:"link_addr"`
	// Run configures `vehicle-sim run`.
	Run Run `yaml:"run"`
}

// Run configures `vehicle-sim run`.
type Run struct {
	// Fleet is a JSON file of credentials, as printed by `gateway admin vehicle add --json`.
	Fleet string `yaml:"fleet"`
	// Cars, instead of Fleet, provisions that many cars through the gateway admin API (once:
	// the credentials are kept in the data dir and reused).
	Cars int `yaml:"cars"`
	// TelemetryInterval is the mean time between two telemetry messages of one car.
	TelemetryInterval time.Duration `yaml:"telemetry_interval"`
	// ConnectRate bounds how many cars start connecting per second.
	ConnectRate float64 `yaml:"connect_rate"`
	// Cert and Key are a device certificate and its key (PEM files, from `gateway admin
	// vehicle add --cert --cert-dir`): the car whose VIN the certificate names presents it over
	// mutual TLS. Cars whose credentials carry a certificate use that one.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Default returns the configuration used when nothing is set.
func Default() Config {
	return Config{
		Broker:    "tcp://127.0.0.1:1883",
		DataDir:   "./sim-data",
		Gateway:   "http://127.0.0.1:8080",
		TokenFile: "./data/admin.token",
		LogLevel:  "info",
		LinkAddr:  link.DefaultAddr,
		Run: Run{
			TelemetryInterval: 10 * time.Second,
			ConnectRate:       200,
		},
	}
}

// EnvPrefix is the prefix of vehicle-sim's environment variables: each flag's variable is
// SIM_FLAG_NAME (SIM_BROKER for --broker), and SIM_CONFIG names the YAML file.
const EnvPrefix = "SIM"

// EnvConfig names the YAML file when --config is not given.
const EnvConfig = "SIM_CONFIG"

// annotKey marks a flag with the YAML key of its setting, for error messages.
const annotKey = "sim_yaml_key"

// Flags registers --config and the flag of every setting `vehicle-sim run` takes on fs, bound
// to c's fields, with c's values (Default()) as the defaults shown in help. Their SIM_*
// variables are bound by cmdline.Execute; Load then layers the YAML file under them.
func (c *Config) Flags(fs *pflag.FlagSet, configPath *string) {
	fs.StringVar(configPath, "config", "", "YAML configuration `FILE` (every setting, see configs/vehicle-sim.yaml)")
	key := func(name, yamlKey string) {
		f := fs.Lookup(name)
		f.Value = keyed{f.Value, yamlKey}
		_ = fs.SetAnnotation(name, annotKey, []string{yamlKey})
	}
	fs.StringVar(&c.Broker, "broker", c.Broker, "`URL` of the MQTT broker")
	key("broker", "broker")
	fs.StringVar(&c.DataDir, "data", c.DataDir, "`DIR` holding the cars' bbolt file (one vehicle-sim per directory)")
	key("data", "data")
	fs.StringVar(&c.Gateway, "gateway", c.Gateway, "`URL` of the gateway HTTP API")
	key("gateway", "gateway")
	fs.StringVar(&c.TokenFile, "token-file", c.TokenFile, "`FILE` holding the gateway admin token")
	key("token-file", "token_file")
	fs.StringVar(&c.CA, "ca", c.CA, "PEM CA certificate `FILE` that verifies an https:// gateway and an ssl:// or wss:// broker")
	key("ca", "ca")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log `LEVEL`: debug, info, warn or error")
	key("log-level", "log_level")
	fs.StringVar(&c.LinkAddr, "link-addr", c.LinkAddr, "loopback `ADDR` (host:port) of the cars' local link (simulated BLE/NFC), or off")
	key("link-addr", "link_addr")
	fs.StringVar(&c.Run.Fleet, "fleet", c.Run.Fleet, "`FILE` of JSON credentials, from 'gateway admin vehicle add --json'")
	key("fleet", "run.fleet")
	fs.IntVar(&c.Run.Cars, "cars", c.Run.Cars, "provision `N` cars through the gateway admin API (kept in the data dir and reused on restart)")
	key("cars", "run.cars")
	fs.DurationVar(&c.Run.TelemetryInterval, "telemetry-interval", c.Run.TelemetryInterval, "mean `DURATION` between two telemetry messages of a car")
	key("telemetry-interval", "run.telemetry_interval")
	fs.Float64Var(&c.Run.ConnectRate, "connect-rate", c.Run.ConnectRate, "`CARS` per second that start connecting")
	key("connect-rate", "run.connect_rate")
	fs.StringVar(&c.Run.Cert, "cert", c.Run.Cert, "device certificate `FILE` (PEM) the car it names presents over mutual TLS")
	key("cert", "run.cert")
	fs.StringVar(&c.Run.Key, "key", c.Run.Key, "`FILE` holding the device certificate's private key (PEM)")
	key("key", "run.key")
}

// Load makes c the configuration: Default, then the YAML file at path (if any), then the
// flags given on fs (a SIM_* variable bound to a flag counts as given), each layer overriding
// the one before. The flags are bound to c's fields (Flags): their values are kept aside,
// the lower layers loaded, and the flags set again on top. The result is not validated.
func Load(fs *pflag.FlagSet, path string, c *Config) error {
	type given struct{ name, value string }
	var flags []given
	fs.Visit(func(f *pflag.Flag) {
		if f.Name != "config" {
			flags = append(flags, given{f.Name, f.Value.String()})
		}
	})
	fresh := Default()
	if path != "" {
		if err := cmdline.LoadFile(path, &fresh); err != nil {
			return err
		}
	}
	*c = fresh
	var errs []error
	for _, g := range flags {
		if err := fs.Set(g.name, g.value); err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", g.name, err))
		}
	}
	return errors.Join(errs...)
}

// keyed is a flag's value that names its setting when a value does not parse, also one from
// the flag's SIM_* variable.
type keyed struct {
	pflag.Value
	key string
}

func (k keyed) Set(s string) error {
	if err := k.Value.Set(s); err != nil {
		switch t := k.Value.Type(); {
		case t == "duration":
			return fmt.Errorf("%s: cannot parse %q: want a duration such as 30s, 5m or 2h", k.key, s)
		case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
			return fmt.Errorf("%s: cannot parse %q: want a whole number", k.key, s)
		case strings.HasPrefix(t, "float"):
			return fmt.Errorf("%s: cannot parse %q: want a number", k.key, s)
		}
		return fmt.Errorf("%s: cannot parse %q: %w", k.key, s, err)
	}
	return nil
}

// FlagError shortens a flag error of a setting's flag to "--cars: run.cars: cannot parse
// …": for a command's cobra FlagErrorFunc.
func FlagError(fs *pflag.FlagSet, err error) error {
	msg := err.Error()
	_, rest, ok := strings.Cut(msg, `for "--`)
	if !ok {
		return err
	}
	name, _, _ := strings.Cut(rest, `"`)
	f := fs.Lookup(name)
	if f == nil || len(f.Annotations[annotKey]) == 0 {
		return err
	}
	if _, why, ok := strings.Cut(rest, " flag: "); ok {
		return fmt.Errorf("--%s: %s", name, why)
	}
	return err
}

// Validate reports every invalid setting at once, each error naming its key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if err := checkURL(c.Broker, "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss"); err != nil {
		bad("broker", "%v", err)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		bad("data", "must not be empty")
	}
	if err := checkURL(c.Gateway, "http", "https"); err != nil {
		bad("gateway", "%v", err)
	}
	if c.CA != "" && !secure(c.Broker) && !secure(c.Gateway) {
		bad("ca", "%s is given but neither broker (%s) nor gateway (%s) uses TLS: use ssl:// or wss:// and https://", c.CA, c.Broker, c.Gateway)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	switch c.LinkAddr {
	case cmdline.Off:
	case "": // off is the one spelling, as for the gateway's and the broker's listeners
		bad("link_addr", "empty address (--link-addr, SIM_LINK_ADDR); write %s to disable the local link, or 127.0.0.1:PORT", cmdline.Off)
	default:
		if err := link.CheckAddr(c.LinkAddr); err != nil {
			bad("link_addr", "%v (or off to disable it)", err)
		}
	}
	if c.Run.Cars < 0 {
		bad("run.cars", "must not be negative")
	}
	if c.Run.TelemetryInterval < 10*time.Millisecond {
		bad("run.telemetry_interval", "%s is too short (at least 10ms)", c.Run.TelemetryInterval)
	}
	if !(c.Run.ConnectRate > 0) {
		bad("run.connect_rate", "must be more than 0 cars per second")
	}
	return errors.Join(errs...)
}

// LinkEnabled reports whether the local link is on: link_addr is not off.
func (c Config) LinkEnabled() bool {
	return c.LinkAddr != cmdline.Off
}

// ErrNoFleet means `vehicle-sim run` was told neither which cars to run nor how many to make.
var ErrNoFleet = errors.New("no fleet given: pass --fleet FILE (credentials from `gateway admin vehicle add --json`) or --cars N (provision N cars through the gateway admin API)")

// ValidateRun is Validate plus what `vehicle-sim run` needs: exactly one of run.fleet and
// run.cars.
func (c Config) ValidateRun() error {
	errs := []error{c.Validate()}
	switch {
	case c.Run.Fleet == "" && c.Run.Cars == 0:
		errs = append(errs, ErrNoFleet)
	case c.Run.Fleet != "" && c.Run.Cars != 0:
		errs = append(errs, errors.New("run.fleet and run.cars: give one of them, not both"))
	}
	if (c.Run.Cert == "") != (c.Run.Key == "") {
		errs = append(errs, errors.New("run.cert and run.key: give both (--cert FILE --key FILE) or neither"))
	}
	return errors.Join(errs...)
}

// secure reports whether a URL's scheme is one of TLS.
func secure(s string) bool {
	u, err := url.Parse(s)
	return err == nil && tlsconf.SecureScheme(u.Scheme)
}

func checkURL(s string, schemes ...string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %w", s, err)
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host (want %s://host:port)", s, schemes[0])
	}
	for _, sc := range schemes {
		if u.Scheme == sc {
			return nil
		}
	}
	return fmt.Errorf("%q: scheme must be one of %s", s, strings.Join(schemes, ", "))
}

// NoArgs refuses positional arguments, naming them: a command whose settings are all flags.
func NoArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return cmdline.UsageError("unexpected arguments: %s", strings.Join(args, " "))
	}
	return nil
}
