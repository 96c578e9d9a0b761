// Command gateway is the cloud side of the telematics system: `gateway serve` runs the
// embedded broker, the command path and the HTTP API; `gateway admin` provisions through a
// running gateway; `gateway demo` tells the whole story in one process; `gateway drill outage`
// takes the cloud down under a fleet and checks that owners still open their cars; `gateway
// store migrate` copies a stopped gateway's state into etcd for a cluster of replicas.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"telematics/gateway/admin"
	"telematics/gateway/demo"
	"telematics/gateway/drill"
	"telematics/gateway/migrate"
	"telematics/gateway/server"
	"telematics/pkg/cmdline"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// A closed stdout (`gateway demo | head -1`) is an EPIPE error the commands handle (they
	// stop and clean up), not a SIGPIPE that kills the process before its deferred cleanup.
	signal.Ignore(syscall.SIGPIPE)
	code := cmdline.Execute(ctx, newRoot(os.Environ()), os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// newRoot is the gateway's command line; environ is the environment Execute is given.
func newRoot(environ []string) *cobra.Command {
	root := cmdline.NewRoot("gateway", "The cloud side of the telematics system", server.EnvPrefix)
	root.Long = `The cloud side of the telematics system: the gateway (HTTP API, command path, key registry,
2FA, audit) with its embedded MQTT broker, an admin client, and a demo of the whole product.

Every flag can also be set by the environment variable shown beside it. Exit status: 0,
1 for a failure, 2 for a usage error.`
	demoCmd, drillCmd, probeCmd, storeCmd := demo.Command(), drill.Command(), probeCommand(), migrate.Command()
	// serve and rotate-key share the server's GATEWAY_* settings (--data is the same dir);
	// the demo's, the drill's and the probe's flags are their own.
	cmdline.PrefixEnv(demoCmd, "GATEWAY_DEMO")
	cmdline.PrefixEnv(drillCmd, "GATEWAY_DRILL")
	cmdline.PrefixEnv(probeCmd, "GATEWAY_PROBE")
	cmdline.PrefixEnv(storeCmd, "GATEWAY_MIGRATE")
	secretsCmd := initSecretsCommand()
	cmdline.PrefixEnv(secretsCmd, "GATEWAY_SECRETS")
	root.AddCommand(server.ServeCommand(environ), admin.Command(), demoCmd, drillCmd, probeCmd, rotateKeyCommand(), storeCmd, secretsCmd, tlsInitCommand())
	return root
}

// probeCommand is a health check for images without curl.
func probeCommand() *cobra.Command {
	var (
		timeout time.Duration
		ca      string
	)
	cmd := &cobra.Command{
		Use:   "probe URL",
		Short: "Exit 0 if URL answers 2xx within the timeout (container health checks: /readyz)",
		Example: `  gateway probe http://127.0.0.1:8080/readyz
  gateway probe --ca data/ca.pem https://127.0.0.1:8443/readyz`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("needs one URL, got %s", cmdline.Plural(len(args), "argument"))
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "how long to wait for the answer")
	cmd.Flags().StringVar(&ca, "ca", "", "PEM `file` of the CA that signed an https:// URL's certificate (the gateway's DATA/ca.pem); default: the system's roots")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := tlsconf.HTTPClient(ca, timeout)
		if err != nil {
			return cmdline.UsageError("--ca: %v", err)
		}
		req, err := http.NewRequestWithContext(cmd.Context(), http.MethodGet, args[0], nil)
		if err != nil {
			return cmdline.UsageError("%v", err)
		}
		resp, err := c.Do(req)
		var unverified *tls.CertificateVerificationError
		if errors.As(err, &unverified) {
			return fmt.Errorf("%w\nthe certificate did not verify: pass its CA certificate with --ca FILE (the gateway writes DATA/ca.pem)", err)
		}
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("%s answered %s", args[0], resp.Status)
		}
		return nil
	}
	return cmd
}

func rotateKeyCommand() *cobra.Command {
	var (
		data   string
		retire bool
	)
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "With the gateway stopped: make a new signing key (cars follow on the next start)",
		Long: `With the gateway stopped: the current signing key becomes the previous one and a new key is
made; on its next start the gateway moves every car to the new key as the car acknowledges.
Once every car is on the new key, --retire-previous ends the rotation: the previous key is
deleted (refused while a car still depends on it). The data directory holds the key files; the
gateway's state is where --store says (as for serve; on etcd, stop every replica first).`,
		Example: `  gateway rotate-key --data ./data
  gateway rotate-key --retire-previous --data ./data
  gateway rotate-key --data ./data --store etcd://10.0.0.1:2379`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().StringVar(&data, "data", server.DefaultConfig().Data, "the gateway's data `directory`")
	cmd.Flags().BoolVar(&retire, "retire-previous", false, "end the rotation: drop the previous key (refused while a car still depends on it)")
	cfg := server.DefaultConfig()
	cmd.Flags().StringVar(&cfg.Store, "store", cfg.Store, "where the gateway's state is, as for serve: empty (DATA/gateway.db), bbolt://PATH or etcd://HOST:PORT[,HOST:PORT...]")
	cmd.Flags().StringVar(&cfg.StorePrefix, "store-prefix", cfg.StorePrefix, "the key prefix of the gateway's state on etcd")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg.Data = data
		if retire {
			return server.RetirePreviousKeyStore(cfg, cmd.OutOrStdout())
		}
		return server.RotateSigningKeyStore(cfg, cmd.OutOrStdout())
	}
	return cmd
}

// tlsInitCommand makes the local CA and server certificate that `gateway serve` makes on its
// first start, for certificates shared with a standalone broker (docker-compose).
func tlsInitCommand() *cobra.Command {
	var (
		dir, out string
		hosts    []string
	)
	cmd := &cobra.Command{
		Use:   "tls-init",
		Short: "Make a local CA and a server certificate for --host names (for a standalone broker, docker-compose)",
		Long: `Make, in --dir, what gateway serve makes in its data directory on first start: a local
certificate authority (ECDSA P-256; ca.pem, ca.key 0600) and a server certificate it signs
(server.pem, server.key 0600) for localhost, 127.0.0.1, ::1 and every --host. Files that
exist are kept; a server certificate that lacks a --host is made again by the same CA. With
--out, ca.pem, server.pem and server.key are copied there too, for the gateway (tls.cert_file,
tls.key_file, tls.ca_file) and the broker (--tls-cert, --tls-key) without the CA's key.`,
		Example: `  gateway tls-init --dir /data/ca --out /data/tls --host broker --host gateway`,
		Args:    cobra.NoArgs,
	}
	cmd.Flags().StringVar(&dir, "dir", "./tls", "`directory` of the CA and the certificate (made 0700 if missing)")
	cmd.Flags().StringVar(&out, "out", "", "`directory` to copy ca.pem, server.pem and server.key to")
	cmd.Flags().StringSliceVar(&hosts, "host", nil, "a `name` or address the server certificate covers (repeat it)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		for _, d := range []string{dir, out} {
			if d == "" {
				continue
			}
			if err := os.MkdirAll(d, 0o700); err != nil {
				return err
			}
		}
		ca, err := tlsconf.EnsureLocalCA(dir, tlsconf.Hosts(hosts), time.Now())
		if err != nil {
			return err
		}
		for _, f := range ca.Made {
			fmt.Fprintf(cmd.OutOrStdout(), "made %s\n", f)
		}
		if out == "" {
			return nil
		}
		for _, c := range []struct {
			from string
			mode os.FileMode
		}{{ca.CA, 0o644}, {ca.Files.Cert, 0o644}, {ca.Files.Key, 0o600}} {
			b, err := os.ReadFile(c.from)
			if err != nil {
				return err
			}
			if err := sign.WriteFileAtomic(filepath.Join(out, filepath.Base(c.from)), b, c.mode); err != nil {
				return err
			}
		}
		fmt.Fprintf(cmd.OutOrStdout(), "copied %s, %s and %s to %s\n", tlsconf.CAFile, tlsconf.ServerFile, tlsconf.ServerKeyFile, out)
		return nil
	}
	return cmd
}
