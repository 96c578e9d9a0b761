package drill

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"telematics/pkg/cmdline"
)

// Command is `gateway drill outage`. Its flags' variables are GATEWAY_DRILL_* (gateway/main.go
// gives them their prefix, as it does for the demo's).
func Command() *cobra.Command {
	group := &cobra.Command{
		Use:   "drill NAME",
		Short: "Run a drill against a gateway, broker and fleet of its own (outage: the cloud down, cars still open)",
		RunE: func(*cobra.Command, []string) error {
			return cmdline.UsageError("name a drill: outage")
		},
	}
	var (
		cars         int
		asJSON       bool
		data         string
		cloudTimeout time.Duration
		verbose      bool
	)
	outage := &cobra.Command{
		Use:   "outage",
		Short: "cloud down, cars still open for their owners; revoked and foreign keys refused; journals filed",
		Long: `Starts a gateway and a fleet whose owners enrolled TOTP and paired phones (every third car with
a friend's shared key, then revoked); one cloud unlock each; the gateway and broker are stopped;
every owner unlocks through the fallback; revoked and foreign keys try the local link; the cloud
comes back and every car's journal must reach the audit log. Exit status 1 if any legitimate
unlock failed or any illegitimate one succeeded.

The fallback's latency is shown with its two parts: the time each phone waited for the cloud to
fail (about --cloud-timeout) and the local link's own exchange.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cars < 1 || cars > 2000 {
				return cmdline.UsageError("--cars must be 1..2000")
			}
			if cloudTimeout <= 0 {
				return cmdline.UsageError("--cloud-timeout must be positive")
			}
			stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			logger := slog.New(slog.DiscardHandler)
			if verbose {
				logger = slog.New(slog.NewTextHandler(stderr, nil))
			}
			progress := stderr
			if !asJSON {
				progress = stdout
			}
			rep := Run(cmd.Context(), Options{Cars: cars, Dir: data, Progress: progress, Logger: logger, CloudTimeout: cloudTimeout})
			if asJSON {
				b, _ := json.Marshal(rep)
				fmt.Fprintln(stdout, string(b))
			} else {
				fmt.Fprint(stdout, "\n"+rep.Summary())
			}
			if !rep.OK {
				return cmdline.WithExitCode(1, nil) // the report says why
			}
			return nil
		},
	}
	f := outage.Flags()
	f.IntVar(&cars, "cars", 50, "cars in the fleet, one owner each (1..2000)")
	f.BoolVar(&asJSON, "json", false, `print the report as one JSON object (with "ok"); the progress goes to stderr`)
	f.StringVar(&data, "data", "", "keep the drill's data in `DIR` (default: a temporary directory, removed at the end)")
	f.DurationVar(&cloudTimeout, "cloud-timeout", time.Second, "how long a phone waits for the cloud before it uses the local link")
	f.BoolVarP(&verbose, "verbose", "v", false, "show the components' logs")
	group.AddCommand(outage)
	return group
}
