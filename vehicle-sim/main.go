// Command vehicle-sim runs simulated vehicles and phones against the telematics gateway:
// `run` a fleet of cars, `app` a phone, `bench` the load generator, `drill failover` a gateway
// replica killed under load (gateway processes; the outage drill is `gateway drill`: it starts
// a gateway in process).
// The commands are cobra commands (pkg/cmdline): flags in any position, help on stdout with
// exit 0, every flag's SIM_* variable in its help; each calls a package.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"telematics/pkg/cmdline"
	"telematics/vehicle-sim/config"
)

// stdio is what a command reads and writes besides its arguments.
type stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Getenv reads HOME and the like; Environ ("KEY=value") holds the SIM_* variables the
	// flags are bound to.
	Getenv  func(string) string
	Environ []string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], stdio{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Environ: os.Environ()})
	stop()
	os.Exit(code)
}

// dispatch runs the command line args and returns the exit code: 0 ok (and help), 1 failure,
// 2 usage.
func dispatch(ctx context.Context, args []string, env stdio) int {
	return cmdline.ExecuteWithEnv(ctx, newRoot(env), args, env.Environ, env.Stdin, env.Stdout, env.Stderr)
}

// newRoot builds the command tree; a new one per run, since cobra keeps parsed flags in it.
func newRoot(env stdio) *cobra.Command {
	root := cmdline.NewRoot("vehicle-sim", "simulated cars and phones for the telematics gateway", config.EnvPrefix)
	root.Long = `vehicle-sim runs simulated cars and phones against the telematics gateway: run a fleet of
cars, act as a phone app, generate load, or kill a gateway replica under load (drill failover; the
outage drill is gateway drill outage). Every flag
may also be set by the SIM_* variable shown in its help; flags go anywhere after the command.`
	root.AddCommand(runCommand(env), appCommand(env), benchCommand(env), drillCommand(env))
	root.RunE = func(c *cobra.Command, _ []string) error {
		// No command: the usage on stderr, exit 2 (as a shell script that forgot it wants).
		fmt.Fprintf(env.Stderr, "usage: vehicle-sim COMMAND [flags]   (vehicle-sim COMMAND --help for its flags)\n\n%s", c.UsageString())
		return cmdline.WithExitCode(2, nil)
	}
	return root
}
