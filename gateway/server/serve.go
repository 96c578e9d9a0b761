package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"telematics/pkg/cmdline"
)

// serveFlags are the configuration keys `gateway serve` also takes as flags; every other key
// is set in the YAML file or by its variable.
var serveFlags = []cmdline.ConfigFlag{
	{Key: "data", Usage: "data `directory` (database, signing keys, admin token); it must exist unless it is ./data or --init is given"},
	{Key: "store", Usage: "state store `URL`: bbolt://PATH or etcd://HOST:PORT[,HOST:PORT...] (default DATA/gateway.db)"},
	{Key: "mqtt_addr", Usage: "embedded broker's plain MQTT listener `address`, or off"},
	{Key: "ws_addr", Usage: "embedded broker's plain MQTT-over-WebSocket listener `address`, or off"},
	{Key: "http_addr", Usage: "plain HTTP listener `address` (health, login, admin API), or off"},
	{Key: "tls.mqtt_addr", Flag: "tls-mqtt-addr", Usage: "embedded broker's MQTT over TLS listener `address`, or off"},
	{Key: "tls.ws_addr", Flag: "tls-ws-addr", Usage: "embedded broker's MQTT over secure WebSocket listener `address`, or off"},
	{Key: "tls.http_addr", Flag: "tls-http-addr", Usage: "HTTPS listener `address`, or off"},
	{Key: "tls.cert_file", Flag: "tls-cert", Usage: "PEM certificate `file` of the TLS listeners (default: made by the gateway's own CA in the data directory)"},
	{Key: "tls.key_file", Flag: "tls-key", Usage: "PEM private key `file` of --tls-cert (mode 0600)"},
	{Key: "tls.client_ca_file", Flag: "client-ca", Usage: "PEM CA `file` whose client certificates the TLS listeners request (not required)"},
	{Key: "allow_plaintext", Usage: "let the plain-text listeners use non-loopback addresses (only behind a TLS proxy or on a private network)"},
	{Key: "external_broker", Usage: "use this broker (tcp://HOST:PORT or ssl://HOST:PORT) instead of the embedded one"},
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
	for _, l := range []struct {
		name string
		addr *string
	}{
		{"ws_addr (--ws-addr, " + EnvPrefix + "_WS_ADDR)", &cfg.WSAddr},
		{"mqtt_addr (--mqtt-addr, " + EnvPrefix + "_MQTT_ADDR)", &cfg.MQTTAddr},
		{"http_addr (--http-addr, " + EnvPrefix + "_HTTP_ADDR)", &cfg.HTTPAddr},
		{"tls.mqtt_addr (--tls-mqtt-addr, " + EnvPrefix + "_TLS_MQTT_ADDR)", &cfg.TLS.MQTTAddr},
		{"tls.ws_addr (--tls-ws-addr, " + EnvPrefix + "_TLS_WS_ADDR)", &cfg.TLS.WSAddr},
		{"tls.http_addr (--tls-http-addr, " + EnvPrefix + "_TLS_HTTP_ADDR)", &cfg.TLS.HTTPAddr},
	} {
		addr, _, err := cmdline.Addr(l.name, *l.addr)
		if err != nil {
			return cfg, err
		}
		*l.addr = addr
	}
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
must not become a new gateway with a new signing key.

TLS: MQTT over TLS (8883), over secure WebSocket (8884) and HTTPS (8443) listen next to the
plain listeners (off for any). Without --tls-cert the gateway makes its own CA and server
certificate in the data directory on first start (ca.pem is what clients pass as --ca).
SIGHUP reads the certificate files again without dropping connections. A plain-text listener
on an address other than loopback is refused unless allow_plaintext is true.`,
		Example: `  gateway serve
  gateway serve --data /var/lib/gw --init --http-addr 127.0.0.1:9080 --ws-addr off
  gateway serve --tls-cert /etc/gw/cert.pem --tls-key /etc/gw/key.pem --mqtt-addr off --http-addr off
  gateway serve --config configs/gateway.yaml --external-broker tcp://127.0.0.1:1883`,
		Args: cobra.NoArgs,
	}
	AddServeFlags(cmd.Flags())
	// Flags named apart from their key take the key's variable, so one setting has one.
	cmdline.SetEnv(cmd, "tls-cert", EnvPrefix+"_TLS_CERT_FILE")
	cmdline.SetEnv(cmd, "tls-key", EnvPrefix+"_TLS_KEY_FILE")
	cmdline.SetEnv(cmd, "client-ca", EnvPrefix+"_TLS_CLIENT_CA_FILE")
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
	// SIGHUP reads the TLS certificate files again; connections stay up. Caught from here on,
	// so that one arriving while the gateway starts does not end the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	g, err := Start(ctx, cfg, Options{Logger: log})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "gateway serving:")
	sep := " "
	for _, l := range []struct{ what, url string }{
		{"HTTPS", g.HTTPSURL()}, {"MQTT over TLS", g.BrokerTLSURL()}, {"MQTT over secure WebSocket", g.wsURL("wss", g.TLSWSAddr())},
		{"HTTP", g.plainHTTPURL()}, {"MQTT", g.plainBrokerURL()}, {"MQTT over WebSocket", g.wsURL("ws", g.WSAddr())},
	} {
		if l.url != "" {
			fmt.Fprintf(stdout, "%s%s %s", sep, l.what, l.url)
			sep = ", "
		}
	}
	fmt.Fprintf(stdout, "\nadmin token in %s, gateway public key in %s/%s\n", cfg.adminTokenPath(), cfg.Data, PublicKeyFile)
	if ca := g.CAFile(); ca != "" {
		fmt.Fprintf(stdout, "clients verify the TLS listeners with the CA certificate %s (--ca)\n", ca)
	}
	hctx, stopHUP := context.WithCancel(ctx)
	hupDone := make(chan struct{})
	go func() {
		defer close(hupDone)
		for {
			select {
			case <-hctx.Done():
				return
			case <-hup:
				if err := g.ReloadTLS(); err != nil {
					log.Error("TLS certificates not reloaded; the previous ones stay", "err", err)
				}
			}
		}
	}()
	werr := g.Wait(ctx)
	stopHUP()
	<-hupDone
	log.Info("shutting down")
	if err := g.Close(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return werr
}
