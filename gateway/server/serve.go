package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"telematics/pkg/cmdline"
)

// serveFlags are the configuration keys `gateway serve` also takes as flags; every other key
// is set in the YAML file or by its variable.
var serveFlags = []cmdline.ConfigFlag{
	{Key: "data", Usage: "data `directory` (database, signing keys, admin token); it must exist unless it is ./data or --init is given"},
	{Key: "store", Usage: "state store `URL`: bbolt://PATH or etcd://HOST:PORT[,HOST:PORT...] (default DATA/gateway.db)"},
	{Key: "mqtt_addr", Usage: "embedded broker's MQTT listener `address`"},
	{Key: "ws_addr", Usage: "embedded broker's MQTT-over-WebSocket listener `address`, or off"},
	{Key: "http_addr", Usage: "HTTP listener `address` (health, login, admin API)"},
	{Key: "external_broker", Usage: "use this broker (tcp://HOST:PORT) instead of the embedded one"},
	{Key: "log_level", Usage: "debug, info, warn or error"},
}

// AddServeFlags defines the flags of `gateway serve` on fs.
func AddServeFlags(fs *pflag.FlagSet) {
	def := DefaultConfig()
	fs.String("config", "", "YAML configuration `file` (configs/gateway.yaml lists every key with its default)")
	fs.Bool("init", false, "create the data directory if it does not exist: a new gateway with new keys")
	cmdline.AddConfigFlags(fs, &def, serveFlags...)
}

// LoadServeConfig builds the Config of `gateway serve`: DefaultConfig, then the YAML file of
// --config (configs/gateway.yaml is NOT read implicitly: the defaults are the file's), then the
// environment (environ: GATEWAY_ variables), then the flags of fs that were given.
func LoadServeConfig(fs *pflag.FlagSet, environ []string) (Config, error) {
	cfg := DefaultConfig()
	if path, _ := fs.GetString("config"); path != "" {
		if err := cfg.LoadFile(path); err != nil {
			return cfg, err
		}
	}
	if err := cmdline.ApplyEnv(EnvPrefix, &cfg, environ); err != nil {
		return cfg, err
	}
	if err := cmdline.ApplyFlags(fs, &cfg, serveFlags...); err != nil {
		return cfg, err
	}
	// off is the one spelling of a disabled listener; an empty value is refused.
	ws, _, err := cmdline.Addr("ws_addr (--ws-addr, "+EnvPrefix+"_WS_ADDR)", cfg.WSAddr)
	if err != nil {
		return cfg, err
	}
	cfg.WSAddr = ws
	return cfg, cfg.Validate()
}

// ParseServeFlags is LoadServeConfig for a command line args and variables found by lookupEnv.
func ParseServeFlags(args []string, stderr io.Writer, lookupEnv func(string) (string, bool)) (Config, error) {
	fs := pflag.NewFlagSet("gateway serve", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	AddServeFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	var environ []string
	def := DefaultConfig()
	for _, name := range cmdline.EnvVars(EnvPrefix, &def) {
		if v, ok := lookupEnv(name); ok {
			environ = append(environ, name+"="+v)
		}
	}
	return LoadServeConfig(fs, environ)
}

// NewLogger returns the logger of `gateway serve` at the configured level.
func NewLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// ServeCommand is `gateway serve`; environ is the environment the command line runs with
// (os.Environ()).
func ServeCommand(environ []string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the gateway with its embedded broker (or in front of an external one)",
		Long: `Run the gateway: the embedded MQTT broker (or a connection to an external one), the command
path and the HTTP API, until SIGINT or SIGTERM, which drain queued requests first.

Settings: the defaults shown below, then the YAML file (--config; configs/gateway.yaml lists
every key), then the environment (GATEWAY_ and the key: GATEWAY_TWOFA_MODE, each flag's
variable shown beside it), then the flags. A listener address is HOST:PORT, or off.
The data directory must exist, unless it is the default ./data or --init is given: a typo
must not become a new gateway with a new signing key.`,
		Example: `  gateway serve
  gateway serve --data /var/lib/gw --init --http-addr 127.0.0.1:9080 --ws-addr off
  gateway serve --config configs/gateway.yaml --external-broker tcp://127.0.0.1:1883`,
		Args: cobra.NoArgs,
	}
	AddServeFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := LoadServeConfig(cmd.Flags(), environ)
		if err != nil {
			return cmdline.WithExitCode(2, err)
		}
		initData, _ := cmd.Flags().GetBool("init")
		if err := CheckDataDir(cfg.Data, initData); err != nil {
			return err
		}
		return serve(cmd.Context(), cfg, cmd.OutOrStdout(), cmd.ErrOrStderr())
	}
	return cmd
}

// Serve runs `gateway serve ARGS…` as the gateway binary does and returns the exit code.
func Serve(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := cmdline.NewRoot("gateway", "The cloud side of the telematics system", EnvPrefix)
	root.AddCommand(ServeCommand(os.Environ()))
	return cmdline.Execute(ctx, root, append([]string{"serve"}, args...), os.Stdin, stdout, stderr)
}

// serve runs the gateway until ctx ends (SIGINT/SIGTERM), then shuts down cleanly.
func serve(ctx context.Context, cfg Config, stdout, stderr io.Writer) error {
	log := NewLogger(stderr, cfg.LogLevel)
	g, err := Start(ctx, cfg, Options{Logger: log})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "gateway serving: HTTP %s, MQTT %s", g.HTTPURL(), g.BrokerURL())
	if ws := g.WSAddr(); ws != "" {
		fmt.Fprintf(stdout, ", MQTT over WebSocket ws://%s", ws)
	}
	fmt.Fprintf(stdout, "\nadmin token in %s, gateway public key in %s/%s\n", cfg.adminTokenPath(), cfg.Data, PublicKeyFile)
	werr := g.Wait(ctx)
	log.Info("shutting down")
	if err := g.Close(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return werr
}
