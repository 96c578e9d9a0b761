package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"

	"telematics/vehicle-sim/config"
	"telematics/vehicle-sim/fleet"
)

// runCommand is `vehicle-sim run`: a fleet of cars until SIGINT/SIGTERM.
func runCommand(ctx context.Context, args []string, env stdio) int {
	fs := flag.NewFlagSet("vehicle-sim run", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: vehicle-sim run (--fleet FILE | --cars N) [flags]")
		fmt.Fprintln(fs.Output(), "\nRuns simulated cars against the broker until interrupted. Settings come from")
		fmt.Fprintln(fs.Output(), "defaults, then --config FILE (YAML), then SIM_* variables, then these flags:")
		fs.PrintDefaults()
	}
	cfg, err := config.NewLoader(fs, config.RunKeys...).Load(args, env.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil {
		err = cfg.ValidateRun()
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim run: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: logLevel(cfg.LogLevel)}))
	if err := fleet.Run(ctx, cfg, fleet.Options{Progress: env.Stdout, Logger: log}); err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim run: %v\n", err)
		return 1
	}
	return 0
}

func logLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}
