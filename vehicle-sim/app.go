package main

import (
	"github.com/spf13/cobra"

	"telematics/vehicle-sim/appcmd"
)

// appCommand is `vehicle-sim app`: the simulated phone (package appcmd).
func appCommand(env stdio) *cobra.Command {
	return appcmd.NewCommand(appcmd.Env{Stdin: env.Stdin, Stdout: env.Stdout, Stderr: env.Stderr, Getenv: env.Getenv, Environ: env.Environ})
}
