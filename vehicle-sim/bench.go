package main

import (
	"github.com/spf13/cobra"

	"telematics/vehicle-sim/bench"
)

// benchCommand is `vehicle-sim bench`: the load generator (package bench).
func benchCommand(env stdio) *cobra.Command {
	return bench.NewCommand(bench.Env{Stdin: env.Stdin, Stdout: env.Stdout, Stderr: env.Stderr})
}
