package main

import (
	"github.com/spf13/cobra"

	"telematics/vehicle-sim/bench"
)

// drillCommand is `vehicle-sim drill failover` (package bench: it drives gateway processes).
func drillCommand(env stdio) *cobra.Command {
	return bench.NewDrillCommand(bench.Env{Stdin: env.Stdin, Stdout: env.Stdout, Stderr: env.Stderr})
}
