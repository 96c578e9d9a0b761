package main

import (
	"log/slog"

	"github.com/spf13/cobra"

	"telematics/pkg/cmdline"
	"telematics/vehicle-sim/config"
	"telematics/vehicle-sim/runcmd"
)

// runCommand is `vehicle-sim run`: a fleet of cars until SIGINT/SIGTERM.
func runCommand(env stdio) *cobra.Command {
	cfg := config.Default()
	var configPath string
	c := &cobra.Command{
		Use:   "run (--fleet FILE | --cars N)",
		Short: "run a fleet of simulated cars against the broker",
		Long: `Runs simulated cars against the broker until interrupted, with their local link (simulated
BLE/NFC) on --link-addr. Settings come from the defaults, then --config FILE (YAML, see
configs/vehicle-sim.yaml), then SIM_* variables, then these flags.`,
		Args: config.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.Load(cmd.Flags(), configPath, &cfg); err != nil {
				return cmdline.UsageError("%v", err)
			}
			if err := cfg.ValidateRun(); err != nil {
				return cmdline.UsageError("%v", err)
			}
			log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: logLevel(cfg.LogLevel)}))
			if err := runcmd.Run(cmd.Context(), cfg, runcmd.Options{Progress: env.Stdout, Logger: log}); err != nil {
				return err
			}
			return nil
		},
	}
	cfg.Flags(c.Flags(), &configPath)
	c.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return cmdline.UsageError("%v", config.FlagError(cmd.Flags(), err))
	})
	return c
}

func logLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}
