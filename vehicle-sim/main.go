// Command vehicle-sim runs simulated vehicles and phones against the telematics gateway:
// `run` a fleet of cars, `app` a phone, `bench` the load generator, `drill` the outage drill.
// Each subcommand parses its own flags (config in vehicle-sim/config) and calls a package.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// stdio is what a subcommand reads and writes besides its arguments.
type stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

// command is one subcommand: run returns the process exit code (0 ok, 1 failure, 2 usage).
type command struct {
	summary string
	run     func(ctx context.Context, args []string, env stdio) int
}

// commands is the dispatch table. A subcommand lives in its own file (run.go, app.go, …) and
// is listed here.
func commands() map[string]command {
	return map[string]command{
		"run":   {"run a fleet of simulated cars against the broker", runCommand},
		"app":   {"act as a phone: login, 2FA, keys, commands, local link", appCommand},
		"drill": {"outage drill: cloud down, cars still open for their owners", drillCommand},
		"bench": {"load generator: connect, telemetry, commands, revoke and local scenarios", benchCommand},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], stdio{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
	stop()
	os.Exit(code)
}

// dispatch runs the subcommand named by args[0].
func dispatch(ctx context.Context, args []string, env stdio) int {
	cmds := commands()
	if len(args) == 0 {
		usage(env.Stderr, cmds)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(env.Stdout, cmds)
		return 0
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(env.Stderr, "vehicle-sim: unknown command %q\n\n", args[0])
		usage(env.Stderr, cmds)
		return 2
	}
	return cmd.run(ctx, args[1:], env)
}

func usage(w io.Writer, cmds map[string]command) {
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(w, "usage: vehicle-sim COMMAND [flags]   (vehicle-sim COMMAND -h for its flags)")
	fmt.Fprintln(w, "\ncommands:")
	for _, n := range names {
		fmt.Fprintf(w, "  %-6s %s\n", n, cmds[n].summary)
	}
}
