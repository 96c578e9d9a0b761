// Package config is vehicle-sim's configuration: every setting with its default, read from an
// optional YAML file, then SIM_* environment variables, then command-line flags, each layer
// overriding the one before; Validate reports every problem at once, naming the setting.
package config

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"telematics/pkg/cmdline"
	"telematics/pkg/vehicle"
)

// Config holds every vehicle-sim setting. The YAML keys are the `yaml` tags (run settings
// under `run:`); the environment variable and flag of each are listed in Settings.
type Config struct {
	// Broker is the MQTT broker the cars (and phones) connect to.
	Broker string `yaml:"broker"`
	// DataDir holds vehicle-sim's bbolt file; one process per directory.
	DataDir string `yaml:"data"`
	// Gateway is the gateway's HTTP API, for provisioning cars and for the app.
	Gateway string `yaml:"gateway"`
	// TokenFile holds the gateway admin token (written by `gateway serve` into its data dir).
	TokenFile string `yaml:"token_file"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LinkAddr is the local link (simulated BLE/NFC) of the cars: `vehicle-sim run` serves it
	// for all its cars on this loopback address; "off" (or "") disables it.
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
}

// Default returns the configuration used when nothing is set.
func Default() Config {
	return Config{
		Broker:    "tcp://127.0.0.1:1883",
		DataDir:   "./sim-data",
		Gateway:   "http://127.0.0.1:8080",
		TokenFile: "./data/admin.token",
		LogLevel:  "info",
		LinkAddr:  vehicle.DefaultLinkAddr,
		Run: Run{
			TelemetryInterval: 10 * time.Second,
			ConnectRate:       200,
		},
	}
}

// Setting describes one configuration value: its YAML key, environment variable and flag.
type Setting struct {
	Key   string // YAML key, dotted for nested sections
	Env   string
	Flag  string
	Usage string
	field func(*Config) any // pointer to the field
}

// Settings lists every setting, in the order of the documentation.
var Settings = []Setting{
	{"broker", "SIM_BROKER", "broker", "`URL` of the MQTT broker", func(c *Config) any { return &c.Broker }},
	{"data", "SIM_DATA", "data", "`DIR` holding the cars' bbolt file (one vehicle-sim per directory)", func(c *Config) any { return &c.DataDir }},
	{"gateway", "SIM_GATEWAY", "gateway", "`URL` of the gateway HTTP API", func(c *Config) any { return &c.Gateway }},
	{"token_file", "SIM_TOKEN_FILE", "token-file", "`FILE` holding the gateway admin token", func(c *Config) any { return &c.TokenFile }},
	{"log_level", "SIM_LOG_LEVEL", "log-level", "log `LEVEL`: debug, info, warn or error", func(c *Config) any { return &c.LogLevel }},
	{"link_addr", "SIM_LINK_ADDR", "link-addr", "loopback `ADDR` (host:port) of the cars' local link (simulated BLE/NFC), or off", func(c *Config) any { return &c.LinkAddr }},
	{"run.fleet", "SIM_FLEET", "fleet", "`FILE` of JSON credentials, from 'gateway admin vehicle add --json'", func(c *Config) any { return &c.Run.Fleet }},
	{"run.cars", "SIM_CARS", "cars", "provision `N` cars through the gateway admin API (kept in the data dir and reused on restart)", func(c *Config) any { return &c.Run.Cars }},
	{"run.telemetry_interval", "SIM_TELEMETRY_INTERVAL", "telemetry-interval", "mean `DURATION` between two telemetry messages of a car", func(c *Config) any { return &c.Run.TelemetryInterval }},
	{"run.connect_rate", "SIM_CONNECT_RATE", "connect-rate", "`CARS` per second that start connecting", func(c *Config) any { return &c.Run.ConnectRate }},
}

// RunKeys are the settings `vehicle-sim run` accepts as flags.
var RunKeys = []string{"broker", "data", "gateway", "token_file", "log_level", "link_addr",
	"run.fleet", "run.cars", "run.telemetry_interval", "run.connect_rate"}

// EnvConfig names the YAML file when --config is not given.
const EnvConfig = "SIM_CONFIG"

// set parses s into the setting's field.
func (st Setting) set(c *Config, s string) error {
	var err error
	switch p := st.field(c).(type) {
	case *string:
		*p = s
	case *int:
		*p, err = strconv.Atoi(strings.TrimSpace(s))
	case *float64:
		*p, err = strconv.ParseFloat(strings.TrimSpace(s), 64)
	case *time.Duration:
		*p, err = time.ParseDuration(strings.TrimSpace(s))
	default:
		err = fmt.Errorf("unsupported type %T", p)
	}
	if err != nil {
		return fmt.Errorf("%s: cannot parse %q: %w", st.Key, s, err)
	}
	return nil
}

// value formats the setting's current value in c.
func (st Setting) value(c *Config) string {
	switch p := st.field(c).(type) {
	case *string:
		return *p
	case *int:
		return strconv.Itoa(*p)
	case *float64:
		return strconv.FormatFloat(*p, 'g', -1, 64)
	case *time.Duration:
		return p.String()
	}
	return ""
}

// Loader reads a subcommand's configuration: it registers --config and the flags of the
// chosen settings on a FlagSet, and Load layers defaults, YAML, environment and flags.
type Loader struct {
	fs         *flag.FlagSet
	configPath string
	flagged    []assignment
}

type assignment struct {
	setting Setting
	value   string
}

// NewLoader registers --config and the flags of the settings named by keys on fs.
func NewLoader(fs *flag.FlagSet, keys ...string) *Loader {
	l := &Loader{fs: fs}
	def := Default()
	fs.StringVar(&l.configPath, "config", "", "YAML configuration `FILE` (env "+EnvConfig+")")
	for _, k := range keys {
		st, ok := lookup(k)
		if !ok {
			panic("config: unknown setting " + k) // a programming error in the caller's key list
		}
		usage := fmt.Sprintf("%s (env %s)", st.Usage, st.Env)
		if v := st.value(&def); v != "" && v != "0" {
			// flag.Func shows no default of its own.
			usage = fmt.Sprintf("%s (env %s, default %s)", st.Usage, st.Env, v)
		}
		fs.Func(st.Flag, usage, func(s string) error {
			l.flagged = append(l.flagged, assignment{st, s})
			return nil
		})
	}
	return l
}

func lookup(key string) (Setting, bool) {
	for _, st := range Settings {
		if st.Key == key {
			return st, true
		}
	}
	return Setting{}, false
}

// Load parses args and returns the configuration: Default, then the YAML file (--config, or
// $SIM_CONFIG), then SIM_* variables from getenv, then the flags given. It returns
// flag.ErrHelp for -h. The result is not validated: call Validate (or ValidateRun).
func (l *Loader) Load(args []string, getenv func(string) string) (Config, error) {
	if err := l.fs.Parse(args); err != nil {
		return Config{}, err
	}
	if l.fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %s", strings.Join(l.fs.Args(), " "))
	}
	cfg := Default()
	path := l.configPath
	if path == "" {
		path = getenv(EnvConfig)
	}
	if path != "" {
		if err := loadYAML(&cfg, path); err != nil {
			return Config{}, err
		}
	}
	var errs []error
	for _, st := range Settings {
		if v, ok := lookupEnv(getenv, st.Env); ok {
			if err := st.set(&cfg, v); err != nil {
				errs = append(errs, fmt.Errorf("env %s: %w", st.Env, err))
			}
		}
	}
	for _, a := range l.flagged {
		if err := a.setting.set(&cfg, a.value); err != nil {
			errs = append(errs, fmt.Errorf("flag --%s: %w", a.setting.Flag, err))
		}
	}
	return cfg, errors.Join(errs...)
}

func lookupEnv(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

// loadYAML overlays the file's settings on cfg. Unknown keys are errors: a misspelt key
// silently ignored is a setting that does not take effect.
func loadYAML(cfg *Config, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	if err := cmdline.DecodeYAML(b, cfg); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// Validate reports every invalid setting at once, each error naming its key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if err := checkURL(c.Broker, "tcp", "mqtt", "ssl", "tls", "ws", "wss"); err != nil {
		bad("broker", "%v", err)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		bad("data", "must not be empty")
	}
	if err := checkURL(c.Gateway, "http", "https"); err != nil {
		bad("gateway", "%v", err)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	if c.LinkEnabled() {
		if err := vehicle.CheckLinkAddr(c.LinkAddr); err != nil {
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

// LinkEnabled reports whether the local link is on: link_addr is neither empty nor "off".
func (c Config) LinkEnabled() bool {
	return strings.TrimSpace(c.LinkAddr) != "" && c.LinkAddr != "off"
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
	return errors.Join(errs...)
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
