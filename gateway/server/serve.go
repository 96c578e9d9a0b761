package server

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// ParseServeFlags builds the Config of `gateway serve`: defaults, then --config (or
// configs/gateway.yaml is NOT read implicitly: the defaults are the file's defaults), then the
// environment, then flags.
func ParseServeFlags(args []string, stderr io.Writer, lookupEnv func(string) (string, bool)) (Config, error) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("gateway serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration file (see configs/gateway.yaml)")
	data := fs.String("data", "", "data directory (default ./data)")
	mqttAddr := fs.String("mqtt-addr", "", "embedded broker's MQTT listener (default 127.0.0.1:1883)")
	wsAddr := fs.String("ws-addr", "", "embedded broker's MQTT-over-WebSocket listener (default 127.0.0.1:1882; \"off\" disables)")
	httpAddr := fs.String("http-addr", "", "HTTP listener (default 127.0.0.1:8080)")
	external := fs.String("external-broker", "", "use this broker (tcp://HOST:PORT) instead of the embedded one")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if *configPath != "" {
		if err := cfg.LoadFile(*configPath); err != nil {
			return cfg, err
		}
	}
	if err := cfg.LoadEnv(lookupEnv); err != nil {
		return cfg, err
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cfg.Data, *data)
	set(&cfg.MQTTAddr, *mqttAddr)
	set(&cfg.WSAddr, *wsAddr)
	set(&cfg.HTTPAddr, *httpAddr)
	set(&cfg.ExternalBroker, *external)
	if cfg.WSAddr == "off" {
		cfg.WSAddr = ""
	}
	return cfg, cfg.Validate()
}

// NewLogger returns the JSON logger of `gateway serve` at the configured level.
func NewLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// Serve runs `gateway serve` until ctx ends (SIGINT/SIGTERM), then shuts down cleanly.
func Serve(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := ParseServeFlags(args, stderr, os.LookupEnv)
	if errors.Is(err, flag.ErrHelp) {
		return 0 // asked for the usage, got it
	}
	if err != nil {
		fmt.Fprintf(stderr, "gateway serve: %v\n", err)
		return 2
	}
	log := NewLogger(stderr, cfg.LogLevel)
	g, err := Start(ctx, cfg, Options{Logger: log})
	if err != nil {
		fmt.Fprintf(stderr, "gateway serve: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "gateway serving: HTTP %s, MQTT %s", g.HTTPURL(), g.BrokerURL())
	if ws := g.WSAddr(); ws != "" {
		fmt.Fprintf(stdout, ", MQTT over WebSocket ws://%s", ws)
	}
	fmt.Fprintf(stdout, "\nadmin token in %s, gateway public key in %s/%s\n", cfg.adminTokenPath(), cfg.Data, PublicKeyFile)
	werr := g.Wait(ctx)
	log.Info("shutting down")
	if err := g.Close(); err != nil {
		fmt.Fprintf(stderr, "gateway serve: shutdown: %v\n", err)
		return 1
	}
	if werr != nil {
		fmt.Fprintf(stderr, "gateway serve: %v\n", werr)
		return 1
	}
	return 0
}
