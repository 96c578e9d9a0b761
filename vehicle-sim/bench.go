package main

import (
	"context"

	"telematics/vehicle-sim/bench"
)

// benchCommand is `vehicle-sim bench`: the load generator (package bench).
func benchCommand(ctx context.Context, args []string, env stdio) int {
	return bench.Run(ctx, args, bench.Env{Stdin: env.Stdin, Stdout: env.Stdout, Stderr: env.Stderr})
}
