package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"

	"telematics/pkg/drill"
)

// drillCommand is `vehicle-sim drill outage`.
func drillCommand(ctx context.Context, args []string, env stdio) int {
	if len(args) == 0 || args[0] != "outage" {
		fmt.Fprintln(env.Stderr, "usage: vehicle-sim drill outage [--cars N] [--json] [--data DIR] [--cloud-timeout D] [-v]")
		return 2
	}
	fs := flag.NewFlagSet("vehicle-sim drill outage", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	cars := fs.Int("cars", 50, "cars in the fleet, one owner each")
	asJSON := fs.Bool("json", false, `print the report as one JSON object (with "ok")`)
	data := fs.String("data", "", "keep the drill's data here (default: a temporary directory)")
	cloudTimeout := fs.Duration("cloud-timeout", 0, "how long a phone waits for the cloud before the local link (default 1s)")
	verbose := fs.Bool("v", false, "show the components' logs")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0 // asked for the usage, got it
		}
		return 2
	}
	if *cars < 1 || *cars > 2000 {
		fmt.Fprintln(env.Stderr, "vehicle-sim drill outage: --cars must be 1..2000")
		return 2
	}
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(env.Stderr, nil))
	}
	progress := env.Stderr
	if !*asJSON {
		progress = env.Stdout
	}
	rep := drill.Run(ctx, drill.Options{Cars: *cars, Dir: *data, Progress: progress, Logger: logger, CloudTimeout: *cloudTimeout})
	if *asJSON {
		b, _ := json.Marshal(rep)
		fmt.Fprintln(env.Stdout, string(b))
	} else {
		fmt.Fprint(env.Stdout, "\n"+rep.Summary())
	}
	if !rep.OK {
		return 1
	}
	return 0
}
