package migrate

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/server"
	"telematics/pkg/cmdline"
)

// Command is `gateway store migrate`. Its flags' variables are GATEWAY_MIGRATE_* (gateway/main.go
// gives them their prefix).
func Command() *cobra.Command {
	group := &cobra.Command{
		Use:   "store COMMAND",
		Short: "Work on the gateway's state as a whole (migrate: from one gateway's bbolt file into etcd)",
		RunE: func(*cobra.Command, []string) error {
			return cmdline.UsageError("name a command: migrate")
		},
	}
	var (
		from, to, prefix    string
		force, asJSON       bool
		lockTimeout, txnMax time.Duration
	)
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Copy a stopped gateway's state from its bbolt file into etcd, for a cluster of replicas",
		Long: `Copies every bucket, key and bucket sequence of a gateway's bbolt file (users, vehicles, keys,
shares, whitelists, TOTP enrollments, audit log, ...) into etcd under --prefix, then reads the
target back and compares each bucket's key count, sequence and SHA-256 checksum with the source.
Replicas started with --store etcd://... on the same prefix then serve the same owners, cars and
keys: no car is provisioned again, no phone enrolled again.

The gateway must be stopped (a running gateway holds the file's lock: refused after
--lock-timeout), and so must every replica on the target. A target that already holds exactly
the source's state is left as it is (running the command twice is harmless); a target holding
anything else is refused, naming what it holds, unless --force, which makes it hold exactly the
source's state.`,
		Example: `  gateway store migrate --from bbolt://./data --to etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379
  gateway store migrate --from bbolt:///var/lib/gateway/gateway.db --to etcd://127.0.0.1:2379 --json`,
		Args: cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "the gateway's bbolt store: bbolt://DATA_DIR or bbolt://FILE")
	f.StringVar(&to, "to", "", "the etcd cluster: etcd://HOST:PORT[,HOST:PORT...]")
	f.StringVar(&prefix, "prefix", "/telematics/", "the key prefix of the gateway's state in etcd: the replicas' store_prefix")
	f.BoolVar(&force, "force", false, "replace whatever the target holds under --prefix with the source's state")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.DurationVar(&lockTimeout, "lock-timeout", time.Second, "how long to wait for the bbolt file's lock (a running gateway holds it)")
	f.DurationVar(&txnMax, "timeout", 10*time.Second, "bound on each etcd transaction (etcd unreachable: fail after this)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		path, err := SourcePath(from)
		if err != nil {
			return cmdline.UsageError("--from: %v", err)
		}
		endpoints, err := EtcdEndpoints(to)
		if err != nil {
			return cmdline.UsageError("--to: %v", err)
		}
		if !strings.HasPrefix(prefix, "/") || !strings.HasSuffix(prefix, "/") {
			return cmdline.UsageError("--prefix: %q must start and end with /", prefix)
		}
		if lockTimeout <= 0 || txnMax <= 0 {
			return cmdline.UsageError("--lock-timeout and --timeout must be positive")
		}
		target, err := etcdkv.Open(etcdkv.Options{Endpoints: endpoints, Prefix: prefix, Timeout: txnMax})
		if err != nil {
			return err
		}
		defer target.Close()
		rep, err := Run(cmd.Context(), Options{From: path, To: target, Force: force, LockTimeout: lockTimeout})
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if asJSON {
			return cmdline.PrintJSON(out, struct {
				OK bool `json:"ok"`
				Report
				To     string `json:"to"`
				Prefix string `json:"prefix"`
			}{rep.Verified, rep, to, prefix})
		}
		if rep.AlreadyMigrated {
			fmt.Fprintf(out, "%s under %s already holds exactly the state of %s: nothing written\n", to, prefix, path)
		} else {
			fmt.Fprintf(out, "copied %s into %s under %s: %s written, %s removed\n", path, to, prefix,
				cmdline.Plural(rep.Written, "key"), cmdline.Plural(rep.Removed, "key"))
		}
		tab := cmdline.NewTable(out)
		tab.Row("BUCKET", "KEYS", "SEQUENCE", "SHA-256")
		for _, b := range rep.Buckets {
			tab.Row(b.Name, b.Keys, b.Sequence, b.Checksum[:16]+"…")
		}
		if err := tab.Flush(); err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "verified: %s in %s, each bucket's key count, sequence and checksum the same in the target\n",
			cmdline.Plural(rep.Keys, "key"), cmdline.Plural(len(rep.Buckets), "bucket"))
		return err
	}
	group.AddCommand(cmd)
	return group
}

// SourcePath is the bbolt file of a --from value: bbolt://FILE, or bbolt://DIR for the
// gateway.db in a data directory.
func SourcePath(from string) (string, error) {
	if !strings.HasPrefix(from, "bbolt://") {
		return "", fmt.Errorf("%q is not bbolt://DATA_DIR or bbolt://FILE", from)
	}
	u, err := server.ParseStoreURL(from)
	if err != nil {
		return "", err
	}
	path := u.BoltPath
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, server.DBFile)
	}
	return path, nil
}

// EtcdEndpoints are the client URLs of an etcd://HOST:PORT[,HOST:PORT...] value, by the rules
// of the gateway's store setting (server.ParseStoreURL).
func EtcdEndpoints(to string) ([]string, error) {
	if !strings.HasPrefix(to, "etcd://") {
		return nil, fmt.Errorf("%q is not etcd://HOST:PORT[,HOST:PORT...]", to)
	}
	u, err := server.ParseStoreURL(to)
	if err != nil {
		return nil, err
	}
	return u.Etcd, nil
}
