package bench

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"telematics/pkg/cmdline"
)

// scenarioHelp describes each scenario, for `vehicle-sim bench --help` and its own help.
var scenarioHelp = []struct{ name, short, long string }{
	{ScenarioConnect, "N cars connect at --connect-rate: time, failures, memory per car and its slope",
		"N cars connect at --connect-rate: time until all are connected, failures, memory per connected\ncar and per added car (the slope, over --steps)."},
	{ScenarioTelemetry, "N cars publish telemetry at --rate each: messages/s into the gateway's twin, losses",
		"N cars publish telemetry at --rate each: messages/s into the gateway's twin, and how many were\nlost (sequence numbers, and sent minus received). Both rates count the same window; what was\nstill queued when it closed reaches the twin afterwards and is shown apart."},
	{ScenarioCommands, "signed cloud commands at --rate over N cars with owners: latency, where the time goes",
		"N real cars, each with an owner who enrolled TOTP, paired a phone key and did one\nTOTP-authorized command (step-up); then signed cloud commands at --rate per second in total for\n--duration: latency percentiles, where the time goes, errors by reason (the gateway runs with\nGATEWAY_RATE_PER_MINUTE=0: no per-user rate limit); with --owners M the cars belong to M\nowners, each with one phone key and one app session."},
	{ScenarioRevoke, "a shared key revoked on N cars: time until every car acknowledged its whitelist",
		"N cars with an owner key and a key shared with another user; the owners revoke the shared key\non every car: time until every car acknowledged its new whitelist."},
	{ScenarioLocal, "unlock/lock over the cars' local link at --rate: latency percentiles",
		"N cars with owners' keys; unlock/lock over the cars' local link at --rate per second in total:\nlatency percentiles."},
}

// NewCommand returns `vehicle-sim bench` with a subcommand per scenario (and the hidden
// `worker`, a load process the bench starts itself).
func NewCommand(env Env) *cobra.Command {
	var b strings.Builder
	for _, sc := range scenarioHelp {
		fmt.Fprintf(&b, "  %-10s %s\n", sc.name, sc.short)
	}
	bench := &cobra.Command{
		Use:   "bench SCENARIO",
		Short: "load generator: connect, telemetry, commands, revoke and local scenarios",
		Long: `Starts the system under test (the gateway built from --src as its own process, with its embedded
broker, the standalone broker, or mosquitto), provisions cars through its admin API, drives them,
and reports what the processes used (from /proc): a table, or one JSON object with --json.

scenarios:
` + strings.TrimRight(b.String(), "\n"),
		RunE: func(*cobra.Command, []string) error {
			return cmdline.UsageError("name a scenario: connect, telemetry, commands, revoke or local")
		},
	}
	for _, sc := range scenarioHelp {
		bench.AddCommand(scenarioCommand(sc.name, sc.short, sc.long, env))
	}
	bench.AddCommand(&cobra.Command{
		Use:    "worker",
		Short:  "a load process of the bench (started by the bench itself; reads its orders on stdin)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return RunWorker(cmd.Context(), env.Stdin, env.Stdout)
		},
	})
	cmdline.PrefixEnv(bench, "SIM_BENCH_")
	return bench
}

func scenarioCommand(name, short, long string, env Env) *cobra.Command {
	var v *flagValues
	c := &cobra.Command{
		Use:   name,
		Short: short,
		Long:  long,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := v.finish(name, cmd.Flags().Changed)
			if err != nil {
				return cmdline.UsageError("%v", err)
			}
			results, err := Execute(cmd.Context(), cfg, env)
			if len(results) > 0 {
				if cfg.JSON {
					enc := json.NewEncoder(env.Stdout)
					if len(results) == 1 {
						_ = enc.Encode(results[0])
					} else {
						_ = enc.Encode(compareReport(cfg, results))
					}
				} else {
					printTable(env.Stdout, cfg, results)
				}
			}
			return err
		},
	}
	v = newFlagValues(c.Flags())
	return c
}
