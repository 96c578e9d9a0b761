// Package bench is `vehicle-sim bench`, the load generator: it starts the system under test
// itself (the gateway binary as a separate process, with its embedded broker, the standalone
// broker, or Debian's mosquitto) or targets running addresses, drives lean simulated cars
// against it, measures the processes through /proc, and reports a table or one JSON object.
//
// Scenarios: "connect" (N cars connect at a rate: time until all are connected, failures,
// memory per connected car and its slope) and "telemetry" (N cars publish telemetry at a rate:
// messages per second that reach the gateway's twin, losses counted from sequence numbers),
// driven by lean cars; and the digital-key scenarios, driven by real cars (pkg/vehicle) and
// phones (pkg/phone) whose owners enrolled TOTP and paired phone keys: "commands" (signed
// cloud commands at a total rate: round-trip latency and where the time goes), "revoke" (a
// shared key revoked on K cars: time until every car acknowledged the new whitelist) and
// "local" (unlocks over the cars' local link).
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"telematics/pkg/protocol"
)

// Scenarios.
const (
	ScenarioConnect   = "connect"
	ScenarioTelemetry = "telemetry"
	ScenarioCommands  = "commands"
	ScenarioRevoke    = "revoke"
	ScenarioLocal     = "local"
)

// keyScenario reports whether the scenario runs real cars with owners and phone keys.
func keyScenario(s string) bool {
	return s == ScenarioCommands || s == ScenarioRevoke || s == ScenarioLocal
}

// Config is one bench invocation.
type Config struct {
	Scenario string

	Cars               int
	ConnectRate        float64 // cars/s over all load processes; 0: as fast as they go
	ConnectConcurrency int     // handshakes in flight over all load processes
	ConnectTimeout     time.Duration
	Steps              int // connect in this many equal steps, measuring memory after each (the slope)
	Settle             time.Duration

	Rate      float64 // telemetry messages/s per car; 0: none; negative: as fast as the system takes them. commands, local: commands/s over all cars
	QoS       int
	Inflight  int // unacknowledged QoS 1 publishes per car
	Duration  time.Duration
	KeepAlive time.Duration

	Broker     string // embedded, standalone, mosquitto or tcp://HOST:PORT
	Gateway    string // target mode: the gateway's HTTP URL
	TokenFile  string // target mode: the admin token
	GatewayPID int    // target mode: processes to measure
	BrokerPID  int

	// TLS: the cars connect over TLS to a TLS listener (connect and telemetry): the gateway's
	// local CA's certificate, the standalone broker's and mosquitto's with a CA the bench makes.
	TLS bool

	Compare bool // embedded and mosquitto, alternately (with TLS: embedded over TLS, plain, mosquitto over TLS)
	Rounds  int
	// Store StoreEtcd runs the scenario against a cluster (ModeCluster: etcd, the standalone
	// broker, Replicas gateways on --store etcd://…) and, in the same invocation, against the
	// single bbolt gateway behind the same standalone broker; "" (or StoreBbolt): no cluster.
	Store    string
	Replicas int
	// unsharedReplicas lets a test start several replicas on their own bbolt files (they share
	// nothing but the key files): the processes' start, key copy, kill and restart, without etcd.
	unsharedReplicas bool

	Procs       int // load processes; 0: in this process up to CarsPerProc cars, else enough children
	CarsPerProc int
	SourceAddrs int // dial from 127.0.0.1 … 127.0.0.N; 0: one address per 25,000 cars

	// The digital-key scenarios.
	Actions          []string // commands, local: actions each car's owner cycles through
	SetupConcurrency int      // owners set up at once (users, logins, TOTP, pairing)
	Concurrency      int      // revoke: revocations in flight at once
	// Owners spreads the cars over this many owners (commands, local), round-robin: owner j
	// owns cars j, j+Owners, j+2·Owners, …, with one phone key paired with each of them and,
	// for commands, one app session; 0: one owner per car.
	Owners int

	JSON         bool
	Src          string   // the module to build the gateway from
	GatewayBin   string   // a built gateway instead
	BrokerBin    string   // a built broker instead
	MosquittoBin string   // Debian's mosquitto
	GatewayEnv   []string // KEY=VALUE for the gateway process
	KeepDir      bool
}

// carsPerSourceAddr is how many connections the bench puts on one loopback source address:
// below the 28,232 ephemeral ports of Linux's default range (32768–60999).
const carsPerSourceAddr = 25_000

// defaultCarsPerProc keeps a load process well under a 20,000-descriptor limit.
const defaultCarsPerProc = 15_000

// Env is what Run needs from its process.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// LoadProcess returns the command of one load process (its stdin and stdout are taken by
	// the bench); nil means re-executing this program as `vehicle-sim bench worker`.
	LoadProcess func() *exec.Cmd
}

// Execute runs the configured scenario once per mode and round, and returns the results of
// the runs that finished.
func Execute(ctx context.Context, cfg Config, env Env) ([]Result, error) {
	if env.Stderr == nil {
		env.Stderr = io.Discard
	}
	modes := []string{cfg.Broker}
	switch {
	case cfg.Compare && cfg.TLS:
		modes = []string{ModeEmbedded + tlsSuffix, ModeEmbedded, ModeMosquitto + tlsSuffix}
	case cfg.Compare:
		modes = []string{ModeEmbedded, ModeMosquitto}
	case cfg.Store == StoreEtcd:
		modes = []string{ModeCluster, ModeStandalone}
	case strings.Contains(cfg.Broker, "://"):
		modes = []string{ModeTarget}
	case cfg.TLS:
		modes = []string{cfg.Broker + tlsSuffix}
	}
	binDir, err := os.MkdirTemp("", "vehicle-sim-bench-bin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(binDir)
	bins, err := buildBinaries(ctx, cfg, binDir, modes, env.Stderr)
	if err != nil {
		return nil, err
	}
	var results []Result
	for round := 1; round <= cfg.Rounds; round++ {
		for _, mode := range modes {
			r := &runner{cfg: cfg, mode: mode, round: round, bins: bins, env: env}
			res, err := r.run(ctx)
			if err != nil {
				return results, fmt.Errorf("%s run (round %d): %w", mode, round, err)
			}
			results = append(results, res)
		}
	}
	return results, nil
}

// rateFlag is --rate: a number of messages per second per car, or "max".
type rateFlag struct{ v *float64 }

func (r rateFlag) String() string {
	if r.v == nil {
		return "0"
	}
	if *r.v < 0 {
		return "max"
	}
	return strconv.FormatFloat(*r.v, 'g', -1, 64)
}

func (r rateFlag) Type() string { return "rate" }

func (r rateFlag) Set(s string) error {
	if s == "max" {
		*r.v = -1
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return errors.New(`want messages per second per car (0 for none) or "max"`)
	}
	*r.v = f
	return nil
}

type listFlag struct{ v *[]string }

func (l listFlag) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, " ")
}

func (l listFlag) Type() string { return "KEY=VALUE" }

func (l listFlag) Set(s string) error {
	if !strings.Contains(s, "=") {
		return errors.New("want KEY=VALUE")
	}
	*l.v = append(*l.v, s)
	return nil
}

// flagValues are the flags of a bench command line, bound to a Config.
type flagValues struct {
	cfg     Config
	actions string
}

// newFlagValues registers every bench flag on fs. The defaults that depend on the scenario
// are applied by finish.
func newFlagValues(fs *pflag.FlagSet) *flagValues {
	v := &flagValues{cfg: Config{Broker: ModeEmbedded, Rounds: 1, QoS: 0, Inflight: 32, KeepAlive: 60 * time.Second,
		ConnectConcurrency: 512, ConnectTimeout: 10 * time.Second, Settle: 2 * time.Second,
		CarsPerProc: defaultCarsPerProc, MosquittoBin: "/usr/sbin/mosquitto", TokenFile: "./data/admin.token",
		Gateway: "http://127.0.0.1:8080"}}
	cfg := &v.cfg
	fs.IntVar(&cfg.Cars, "cars", 0, "cars (default: connect 1000, the others 100)")
	fs.Float64Var(&cfg.ConnectRate, "connect-rate", 2000, "cars connecting per second, over all load processes; 0: as fast as they go")
	fs.IntVar(&cfg.ConnectConcurrency, "connect-concurrency", cfg.ConnectConcurrency, "handshakes in flight at once, over all load processes")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", cfg.ConnectTimeout, "bound of one car's dial and CONNACK")
	fs.IntVar(&cfg.Steps, "steps", 0, "connect in this many equal steps, memory measured after each (default: connect 2, telemetry 1)")
	fs.DurationVar(&cfg.Settle, "settle", cfg.Settle, "wait after each connect step before measuring memory")
	fs.Var(rateFlag{&cfg.Rate}, "rate", `telemetry messages per second per car, or "max" (default: connect 0, telemetry max);`+"\n"+
		`commands and local: commands per second over all cars (default: commands 100, local 200)`)
	fs.IntVar(&cfg.QoS, "qos", cfg.QoS, "telemetry QoS, 0 or 1")
	fs.IntVar(&cfg.Inflight, "inflight", cfg.Inflight, "QoS 1 publishes per car awaiting their PUBACK")
	fs.DurationVar(&cfg.Duration, "duration", 0, "how long the cars publish or the phones send (default: connect 0, telemetry, commands, local 10s)")
	fs.DurationVar(&cfg.KeepAlive, "keepalive", cfg.KeepAlive, "MQTT keep-alive of the cars")
	fs.StringVar(&cfg.Broker, "broker", cfg.Broker, "system under test: embedded (gateway serve), standalone (broker + gateway),\nmosquitto (mosquitto + gateway), or tcp://HOST:PORT of a running broker (with --gateway, --token-file)")
	fs.StringVar(&cfg.Gateway, "gateway", cfg.Gateway, "with --broker tcp://…: the running gateway's HTTP URL")
	fs.StringVar(&cfg.TokenFile, "token-file", cfg.TokenFile, "with --broker tcp://…: the gateway's admin token file (DATA/admin.token)")
	fs.IntVar(&cfg.GatewayPID, "gateway-pid", 0, "with --broker tcp://…: measure this gateway process")
	fs.IntVar(&cfg.BrokerPID, "broker-pid", 0, "with --broker tcp://…: measure this broker process (the gateway's pid if embedded)")
	fs.BoolVar(&cfg.Compare, "compare", false, "run the scenario against embedded and mosquitto, alternately, and print the ratios\n(with --tls: embedded over TLS, embedded in plain text, mosquitto over TLS)")
	fs.BoolVar(&cfg.TLS, "tls", false, "connect and telemetry: the cars connect over TLS (the broker's certificate verified with its CA)")
	fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "runs per broker mode")
	fs.StringVar(&cfg.Store, "store", "", "etcd: run against a cluster (etcd, the standalone broker, --replicas gateways on --store etcd://…)\n"+
		"and against the single bbolt gateway behind the same broker, alternately, and print the ratios")
	fs.IntVar(&cfg.Replicas, "replicas", 0, "with --store etcd: gateway replicas in the cluster (default 3)")
	fs.IntVar(&cfg.Procs, "procs", 0, "load processes (0: this process up to --cars-per-proc cars, else as many children as needed)")
	fs.IntVar(&cfg.CarsPerProc, "cars-per-proc", cfg.CarsPerProc, "most cars one load process runs (each holds one descriptor per car)")
	fs.IntVar(&cfg.SourceAddrs, "source-addrs", 0, "dial from 127.0.0.1 … 127.0.0.N (0: one address per 25,000 cars)")
	fs.StringVar(&v.actions, "actions", "", "commands, local: the actions each owner cycles through, comma-separated (default unlock,lock)")
	fs.IntVar(&cfg.SetupConcurrency, "setup-concurrency", 16, "commands, revoke, local: owners set up at once (user, login, TOTP, pairing)")
	fs.IntVar(&cfg.Owners, "owners", 0, "commands, local: spread the cars over this many owners, round-robin (a fleet operator's accounts):\n"+
		"each enrolls TOTP once, pairs one phone key with each of its cars and keeps one app session (0: one owner per car)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 32, "revoke: revocations in flight at once")
	fs.BoolVar(&cfg.JSON, "json", false, "print one JSON object instead of the table")
	fs.StringVar(&cfg.Src, "src", "", "the telematics module to build the gateway from (default: found from the working directory)")
	fs.StringVar(&cfg.GatewayBin, "gateway-bin", "", "a built gateway binary instead of building one")
	fs.StringVar(&cfg.BrokerBin, "broker-bin", "", "a built broker binary instead of building one (standalone mode)")
	fs.StringVar(&cfg.MosquittoBin, "mosquitto", cfg.MosquittoBin, "the mosquitto binary")
	fs.Var(listFlag{&cfg.GatewayEnv}, "gateway-env", "KEY=VALUE for the gateway process, e.g. GATEWAY_BROKER_MAX_CLIENT_WRITES_PENDING=128 (repeatable)")
	fs.BoolVar(&cfg.KeepDir, "keep", false, "keep the system under test's directory (data, configs, logs)")
	return v
}

// finish applies the scenario's defaults to the flags not given (changed reports the given
// ones) and validates the configuration.
func (v *flagValues) finish(scenario string, changed func(name string) bool) (Config, error) {
	cfg := v.cfg
	cfg.Scenario = scenario
	switch cfg.Scenario {
	case ScenarioConnect:
		cfg.Cars = or(cfg.Cars, 1000)
		cfg.Steps = or(cfg.Steps, 2)
	case ScenarioTelemetry:
		cfg.Cars = or(cfg.Cars, 100)
		cfg.Steps = or(cfg.Steps, 1)
		if !changed("rate") {
			cfg.Rate = -1
		}
		if !changed("duration") {
			cfg.Duration = 10 * time.Second
		}
	case ScenarioCommands, ScenarioLocal:
		cfg.Cars = or(cfg.Cars, 100)
		cfg.Steps = 1
		if !changed("rate") {
			cfg.Rate = 100
			if cfg.Scenario == ScenarioLocal {
				cfg.Rate = 200
			}
		}
		if !changed("duration") {
			cfg.Duration = 10 * time.Second
		}
	case ScenarioRevoke:
		cfg.Cars = or(cfg.Cars, 100)
		cfg.Steps = 1
	}
	if cfg.Store == StoreEtcd && cfg.Replicas == 0 {
		cfg.Replicas = 3
	}
	if v.actions != "" {
		for _, a := range strings.Split(v.actions, ",") {
			cfg.Actions = append(cfg.Actions, strings.TrimSpace(a))
		}
	}
	return cfg, cfg.Validate()
}

// ParseFlags reads `vehicle-sim bench SCENARIO [flags]` (without the environment, which the
// command binds to the flags). Defaults depend on the scenario: connect 1,000 cars at 2,000/s
// in 2 steps and no telemetry; telemetry 100 cars as fast as they go for 10 s.
func ParseFlags(args []string, stderr io.Writer) (Config, error) {
	fs := pflag.NewFlagSet("vehicle-sim bench", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	v := newFlagValues(fs)
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return v.cfg, errors.New("name a scenario: connect, telemetry, commands, revoke or local")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return v.cfg, err
	}
	if fs.NArg() > 0 {
		return v.cfg, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return v.finish(args[0], fs.Changed)
}

func or(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// Validate reports every problem at once, naming the flag.
func (c Config) Validate() error {
	var errs []error
	bad := func(flag, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, args...)))
	}
	if c.Scenario != ScenarioConnect && c.Scenario != ScenarioTelemetry && !keyScenario(c.Scenario) {
		errs = append(errs, fmt.Errorf("unknown scenario %q: want connect, telemetry, commands, revoke or local", c.Scenario))
	}
	if c.Scenario == ScenarioCommands || c.Scenario == ScenarioLocal {
		if c.Rate <= 0 || c.Duration <= 0 {
			bad("rate", "the %s scenario needs commands per second over all cars (not max) and a --duration", c.Scenario)
		}
		if c.Scenario == ScenarioCommands && c.Duration > maxCommandsWindow {
			bad("duration", "%s: at most %s, so that the owners' 2FA step-up (twofa.step_up_ttl, 5m) covers the whole run", c.Duration, maxCommandsWindow)
		}
		for _, a := range c.Actions {
			if !protocol.Action(a).Valid() {
				bad("actions", "%q is not an action (docs/PROTOCOL.md, \"Actions and roles\")", a)
			}
		}
	}
	switch {
	case c.Owners < 0:
		bad("owners", "%d must not be negative (0: one owner per car)", c.Owners)
	case c.Owners > 0 && c.Scenario != ScenarioCommands && c.Scenario != ScenarioLocal:
		bad("owners", "only for the commands and local scenarios, not %s", c.Scenario)
	case c.Owners > c.Cars && c.Cars >= 1:
		bad("owners", "%d owners for %d cars: want at most --cars (every owner owns at least one car)", c.Owners, c.Cars)
	}
	if keyScenario(c.Scenario) {
		if c.SetupConcurrency < 1 {
			bad("setup-concurrency", "%d: want at least 1", c.SetupConcurrency)
		}
		if c.Concurrency < 1 {
			bad("concurrency", "%d: want at least 1", c.Concurrency)
		}
	}
	if c.Cars < 1 {
		bad("cars", "%d: want at least 1", c.Cars)
	}
	if c.ConnectRate < 0 {
		bad("connect-rate", "%g must not be negative", c.ConnectRate)
	}
	if c.ConnectConcurrency < 1 {
		bad("connect-concurrency", "%d: want at least 1", c.ConnectConcurrency)
	}
	if c.Steps < 1 || c.Steps > c.Cars {
		bad("steps", "%d: want 1 to --cars", c.Steps)
	}
	if c.QoS != 0 && c.QoS != 1 {
		bad("qos", "%d: want 0 or 1", c.QoS)
	}
	if c.Inflight < 1 || c.Inflight > 1024 {
		bad("inflight", "%d: want 1 to 1024", c.Inflight)
	}
	if c.Duration < 0 {
		bad("duration", "%s must not be negative", c.Duration)
	}
	if c.Scenario == ScenarioTelemetry && (c.Rate == 0 || c.Duration <= 0) {
		bad("rate", "the telemetry scenario needs a rate and a --duration")
	}
	if c.KeepAlive < 0 || c.KeepAlive > 18*time.Hour {
		bad("keepalive", "%s: want 0 (none) to 18h", c.KeepAlive)
	}
	switch {
	case c.Broker == ModeEmbedded || c.Broker == ModeStandalone || c.Broker == ModeMosquitto:
	case strings.HasPrefix(c.Broker, "tcp://"):
		if c.Compare {
			bad("compare", "starts its own brokers; it cannot be used with --broker %s", c.Broker)
		}
	default:
		bad("broker", "%q: want embedded, standalone, mosquitto or tcp://HOST:PORT", c.Broker)
	}
	if c.TLS && (keyScenario(c.Scenario) || strings.HasPrefix(c.Broker, "tcp://")) {
		bad("tls", "for the connect and telemetry scenarios against a broker the bench starts")
	}
	if c.Rounds < 1 {
		bad("rounds", "%d: want at least 1", c.Rounds)
	}
	switch {
	case c.Store != "" && c.Store != StoreEtcd && c.Store != StoreBbolt:
		bad("store", "%q: want etcd (a cluster next to the single bbolt gateway) or bbolt (the default: no cluster)", c.Store)
	case c.Store == StoreEtcd && (c.Compare || strings.HasPrefix(c.Broker, "tcp://")):
		bad("store", "starts its own cluster and single gateway: not with --compare or --broker tcp://…")
	case c.Store != StoreEtcd && c.Replicas > 1:
		bad("replicas", "%d replicas share their state only in etcd: add --store etcd", c.Replicas)
	}
	if c.Replicas < 0 || c.Replicas > 16 {
		bad("replicas", "%d: want 1 to 16", c.Replicas)
	}
	if c.Procs < 0 {
		bad("procs", "%d must not be negative", c.Procs)
	}
	if c.CarsPerProc < 1 {
		bad("cars-per-proc", "%d: want at least 1", c.CarsPerProc)
	}
	if c.SourceAddrs < 0 || c.SourceAddrs > 254 {
		bad("source-addrs", "%d: want 0 to 254", c.SourceAddrs)
	}
	return errors.Join(errs...)
}
