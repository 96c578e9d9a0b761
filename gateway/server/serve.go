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
	cfg, _, err := parseServe(args, stderr, lookupEnv)
	return cfg, err
}

// parseServe is ParseServeFlags, and whether --init was given.
func parseServe(args []string, stderr io.Writer, lookupEnv func(string) (string, bool)) (Config, bool, error) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("gateway serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration file (see configs/gateway.yaml)")
	data := fs.String("data", "", "data directory (default ./data); it must exist unless --init")
	initData := fs.Bool("init", false, "create the data directory if it does not exist (a new gateway with new keys)")
	mqttAddr := fs.String("mqtt-addr", "", "embedded broker's MQTT listener (default 127.0.0.1:1883)")
	wsAddr := fs.String("ws-addr", "", "embedded broker's MQTT-over-WebSocket listener (default 127.0.0.1:1882; off disables)")
	httpAddr := fs.String("http-addr", "", "HTTP listener (default 127.0.0.1:8080)")
	external := fs.String("external-broker", "", "use this broker (tcp://HOST:PORT) instead of the embedded one")
	if err := fs.Parse(args); err != nil {
		return cfg, false, err
	}
	if fs.NArg() > 0 {
		return cfg, false, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if *configPath != "" {
		if err := cfg.LoadFile(*configPath); err != nil {
			return cfg, false, err
		}
	}
	if err := cfg.LoadEnv(lookupEnv); err != nil {
		return cfg, false, err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	set := func(dst *string, name, v string) {
		if !given[name] {
			return
		}
		if v == "" && name != "external-broker" && name != "ws-addr" { // ws-addr: listenerAddr says "write off"
			errs = append(errs, fmt.Errorf("--%s is empty: give a value (or leave the flag out for the default)", name))
			return
		}
		*dst = v
	}
	set(&cfg.Data, "data", *data)
	set(&cfg.MQTTAddr, "mqtt-addr", *mqttAddr)
	set(&cfg.WSAddr, "ws-addr", *wsAddr)
	set(&cfg.HTTPAddr, "http-addr", *httpAddr)
	set(&cfg.ExternalBroker, "external-broker", *external)
	var err error
	if cfg.WSAddr, err = listenerAddr("ws_addr (--ws-addr, GATEWAY_WS_ADDR)", cfg.WSAddr); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return cfg, false, errors.Join(errs...)
	}
	return cfg, *initData, cfg.Validate()
}

// listenerAddr applies the one spelling of a disabled listener, "off". An empty value is
// refused: it once meant "the default" on the command line and "disabled" in the file.
func listenerAddr(key, v string) (string, error) {
	switch v {
	case "off":
		return "", nil
	case "":
		return "", fmt.Errorf("%s is empty: write off to disable the listener", key)
	}
	return v, nil
}

// NewLogger returns the JSON logger of `gateway serve` at the configured level.
func NewLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// Serve runs `gateway serve` until ctx ends (SIGINT/SIGTERM), then shuts down cleanly.
func Serve(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, initData, err := parseServe(args, stderr, os.LookupEnv)
	if errors.Is(err, flag.ErrHelp) {
		return 0 // asked for the usage, got it
	}
	if err != nil {
		fmt.Fprintf(stderr, "gateway serve: %v\n", err)
		return 2
	}
	if err := CheckDataDir(cfg.Data, initData); err != nil {
		fmt.Fprintf(stderr, "gateway serve: %v\n", err)
		return 1
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
