package main

import (
	"context"

	"telematics/vehicle-sim/appcmd"
)

func appCommand(ctx context.Context, args []string, env stdio) int {
	return appcmd.Run(ctx, args, appcmd.Env{Stdin: env.Stdin, Stdout: env.Stdout, Stderr: env.Stderr, Getenv: env.Getenv})
}
