package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"telematics/pkg/cmdline"
)

// NewDrillCommand returns `vehicle-sim drill` with its one drill, failover. Its flags'
// variables are SIM_DRILL_*. (The outage drill, which starts a gateway in process, is
// `gateway drill outage`: vehicle-sim runs the gateway only as processes.)
func NewDrillCommand(env Env) *cobra.Command {
	group := &cobra.Command{
		Use:   "drill NAME",
		Short: "Run a drill against gateway processes of its own (failover: a replica killed under load)",
		RunE: func(*cobra.Command, []string) error {
			return cmdline.UsageError("name a drill: failover (the outage drill is gateway drill outage)")
		},
	}
	o := FailoverOptions{}
	var (
		asJSON  bool
		actions string
	)
	failover := &cobra.Command{
		Use:   "failover",
		Short: "a gateway replica killed (SIGKILL) under a command load: one terminal reply per request, nothing run twice, no write lost",
		Long: `Starts etcd (Debian's etcd-server when installed, else an embedded one), the standalone broker
and --replicas gateway processes (gateway serve --external-broker … --store etcd://…, each with
its own HTTP address and a copy of the first one's key files), a fleet of --cars real cars whose
owners enrolled TOTP and paired phone keys, and a steady load of signed commands at --rate per
second for --duration. A third into the load, the first replica (the one the owners set up
through) acknowledges a key change per car (up to 20) and is killed with SIGKILL; at two thirds
it is started again.

The report: requests, how many got exactly one terminal reply, duplicates, unanswered, the
terminal replies by status, the cars' own executions (executed twice, handed again after
executing), replies that disagree with the car, the requests pending at the kill and when the
last was answered, latency p50/p99 of the requests sent before, during and after the loss, and
the acknowledged writes found on every replica afterwards. Exit status 1 if any request did not
get exactly one terminal reply, any car executed a request twice, a reply disagreed with the
car, or an acknowledged write was lost.

The gateway needs its --store flag (issue 11) for --store etcd; --replicas 1 --store bbolt runs
the same drill against one gateway on its bbolt file, killed and restarted on it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Actions = ParseActions(actions)
			if err := o.validate(); err != nil {
				return cmdline.UsageError("%v", err)
			}
			stdout, stderr := env.Stdout, env.Stderr
			o.Progress = stderr
			if !asJSON {
				o.Progress = stdout
			}
			rep, err := RunFailover(cmd.Context(), o)
			if errors.Is(err, ErrNoStoreFlag) {
				err = fmt.Errorf("%w; --replicas 1 --store bbolt runs the drill against one gateway", err)
			}
			if err != nil {
				// The drill could not run: say why, and with --json still one object with "ok".
				if asJSON {
					rep.OK, rep.Problems = false, append(rep.Problems, err.Error())
					b, _ := json.Marshal(rep)
					fmt.Fprintln(stdout, string(b))
				}
				return err
			}
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
	f := failover.Flags()
	f.IntVar(&o.Replicas, "replicas", 3, "gateway replicas (1..16)")
	f.StringVar(&o.Store, "store", StoreEtcd, "where the replicas keep their state: etcd, or bbolt (one replica only)")
	f.IntVar(&o.Cars, "cars", 20, "cars in the fleet, one owner each (1..2000)")
	f.DurationVar(&o.Duration, "duration", 30*time.Second, "how long the load runs (the kill at a third, the restart at two thirds)")
	f.Float64Var(&o.Rate, "rate", 20, "requests per second over all cars")
	f.StringVar(&actions, "actions", strings.Join([]string{"lock", "flash"}, ","), "the actions each owner cycles through, comma-separated (actions that need no code)")
	f.IntVar(&o.Writes, "writes", 0, "key changes the first replica acknowledges before it is killed (default: one per car, at most 20)")
	f.BoolVar(&asJSON, "json", false, `print the report as one JSON object (with "ok"); the progress goes to stderr`)
	f.StringVar(&o.Src, "src", "", "the telematics module to build the gateway and broker from (default: found from the working directory)")
	f.StringVar(&o.GatewayBin, "gateway-bin", "", "a built gateway binary instead of building one")
	f.StringVar(&o.BrokerBin, "broker-bin", "", "a built broker binary instead of building one")
	f.Var(listFlag{&o.GatewayEnv}, "gateway-env", "KEY=VALUE for every gateway process (repeatable)")
	f.BoolVar(&o.KeepDir, "keep", false, "keep the drill's directory (data, logs)")
	group.AddCommand(failover)
	cmdline.PrefixEnv(group, "SIM_DRILL_")
	return group
}
