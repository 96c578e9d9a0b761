// Command gateway is the cloud side of the telematics system: `gateway serve` runs the
// embedded broker, the command path and the HTTP API; `gateway admin` provisions through a
// running gateway; `gateway demo` tells the whole story in one process.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"telematics/gateway/admin"
	"telematics/gateway/demo"
	"telematics/gateway/server"
)

const usage = `usage: gateway COMMAND [flags]

commands:
  demo    start everything in one process and tell the story (--json for a machine summary)
  serve   run the gateway with its embedded broker (see --help)
  admin   talk to a running gateway's admin API (vehicles, users, audit)
  probe URL  exit 0 if URL answers 2xx within 3 s (container health checks: /readyz)
  rotate-key [--data DIR]
          with the gateway stopped: make a new signing key; cars follow on the next start
  rotate-key --retire-previous [--data DIR]
          with the gateway stopped: once every car is on the new key, stop trusting the previous one
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A closed stdout (`gateway demo | head -1`) is an EPIPE error the commands handle (they
	// stop and clean up), not a SIGPIPE that kills the process before its deferred cleanup.
	signal.Ignore(syscall.SIGPIPE)
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var code int
	switch os.Args[1] {
	case "serve":
		code = server.Serve(ctx, os.Args[2:], os.Stdout, os.Stderr)
	case "admin":
		code = admin.Run(ctx, os.Args[2:], admin.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	case "demo":
		code = demo.Main(ctx, os.Args[2:], os.Stdout, os.Stderr)
	case "probe":
		code = probe(os.Args[2:])
	case "rotate-key":
		fs := flag.NewFlagSet("gateway rotate-key", flag.ContinueOnError)
		data := fs.String("data", "./data", "the gateway's data directory")
		retire := fs.Bool("retire-previous", false, "end the rotation: drop the previous key (refused while a car still depends on it)")
		if err := fs.Parse(os.Args[2:]); err != nil {
			os.Exit(2)
		}
		rotate := server.RotateSigningKey
		if *retire {
			rotate = server.RetirePreviousKey
		}
		if err := rotate(*data, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "gateway rotate-key: %v\n", err)
			code = 1
		}
	case "-h", "--help", "help":
		fmt.Fprint(os.Stdout, usage)
	default:
		fmt.Fprintf(os.Stderr, "gateway: unknown command %q\n\n%s", os.Args[1], usage)
		code = 2
	}
	os.Exit(code)
}

// probe is a health check for images without curl.
func probe(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: gateway probe URL")
		return 2
	}
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "gateway probe: %v\n", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		fmt.Fprintf(os.Stderr, "gateway probe: %s answered %s\n", args[0], resp.Status)
		return 1
	}
	return 0
}
