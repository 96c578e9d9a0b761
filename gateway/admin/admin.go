// Package admin is `gateway admin …`: a command-line client of the running gateway's admin
// API (vehicles, users, assignments, keys, audit), as a cobra command tree.
package admin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"telematics/pkg/api"
	"telematics/pkg/cmdline"
	"telematics/pkg/protocol"
	"telematics/pkg/tlsconf"
)

// Env is what a command reads and writes.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// Run executes `gateway admin ARGS…` as the gateway binary does and returns the exit code.
func Run(ctx context.Context, args []string, env Env) int {
	root := cmdline.NewRoot("gateway", "The cloud side of the telematics system", "GATEWAY")
	root.AddCommand(Command())
	return cmdline.Execute(ctx, root, append([]string{"admin"}, args...), env.Stdin, env.Stdout, env.Stderr)
}

// Variables of the persistent flags: names operators already use.
const (
	EnvServer    = "GATEWAY_ADMIN_SERVER"
	EnvTokenFile = "GATEWAY_ADMIN_TOKEN_FILE"
	EnvCA        = "GATEWAY_ADMIN_CA"
)

// options are the flags every admin command has.
type options struct {
	server    string
	tokenFile string
	ca        string
	json      bool
}

// Command is `gateway admin`.
func Command() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Talk to a running gateway's admin API (vehicles, users, keys, audit)",
		Long: `Talk to a running gateway's admin API: provision vehicles, manage users and their roles,
revoke keys, read the audit log. Every command needs the admin token, which the gateway
writes to DATA/admin.token when it starts (--token-file). Flags may come anywhere on the
command line. Text for people by default, --json for scripts.`,
		Example: `  gateway admin vehicle add --count 2
  gateway admin vehicle list --server http://gw:8080 --token-file /secrets/admin.token
  gateway admin vehicle add --server https://127.0.0.1:8443 --ca data/ca.pem --json
  GATEWAY_ADMIN_SERVER=http://gw:8080 gateway admin audit --since 24h --csv > audit.csv`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.server, "server", "http://127.0.0.1:8080", "the gateway's `URL`")
	pf.StringVar(&o.tokenFile, "token-file", "./data/admin.token", "`file` holding the admin token (the gateway writes DATA/admin.token)")
	pf.StringVar(&o.ca, "ca", "", "PEM CA certificate `file` that verifies an https:// --server (the gateway writes DATA/ca.pem)")
	pf.BoolVar(&o.json, "json", false, "print JSON, for scripts")
	cmdline.SetEnv(cmd, "server", EnvServer)
	cmdline.SetEnv(cmd, "token-file", EnvTokenFile)
	cmdline.SetEnv(cmd, "ca", EnvCA)
	cmd.AddCommand(vehicleCommand(o), userCommand(o), keyCommand(o), auditCommand(o))
	cmd.AddCommand(operatorCommand(o))
	// The admin's flags mean something of their own (--json, --user, --limit are not the
	// server's settings): GATEWAY_ADMIN_JSON, GATEWAY_ADMIN_USER, …, so a variable meant for
	// one command does not change another.
	cmdline.PrefixEnv(cmd, "GATEWAY_ADMIN")
	return cmd
}

// client reads the admin token: only when a command runs, never for help.
func (o *options) client() (*api.Client, error) {
	tok, err := os.ReadFile(o.tokenFile)
	if err == nil && strings.TrimSpace(string(tok)) == "" {
		err = errors.New("the file is empty")
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read the admin token from %s: %v\n"+
			"name the file with --token-file or $%s (the gateway writes it to DATA/admin.token when it starts)",
			o.tokenFile, err, EnvTokenFile)
	}
	c := api.NewClient(o.server, strings.TrimSpace(string(tok)))
	if o.ca != "" {
		// A CA asks for verification: a plain-text server would silently skip it.
		if u, err := url.Parse(o.server); err == nil && !tlsconf.SecureScheme(u.Scheme) {
			return nil, cmdline.UsageError("--ca %s is given but --server %s is plain text: use https://", o.ca, o.server)
		}
		if c.HTTP, err = tlsconf.HTTPClient(o.ca, api.DefaultTimeout); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// do runs fn with a client: the RunE of every command that talks to the gateway.
func (o *options) do(fn func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := o.client()
		if err != nil {
			return err
		}
		err = fn(cmd.Context(), c, cmd, args)
		var badCert *tls.CertificateVerificationError
		if errors.As(err, &badCert) {
			return fmt.Errorf("%w\nthe gateway's certificate did not verify: pass its CA certificate with --ca FILE (the gateway writes DATA/ca.pem) or $%s", err, EnvCA)
		}
		return err
	}
}

// print writes v as JSON with --json, else calls human.
func (o *options) print(cmd *cobra.Command, v any, human func(w io.Writer) error) error {
	if o.json {
		return cmdline.PrintJSON(cmd.OutOrStdout(), v)
	}
	return human(cmd.OutOrStdout())
}

// args checks the positional arguments against their names ("VIN", "USER").
func args(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, got []string) error {
		switch {
		case len(names) == 0 && len(got) > 0:
			return fmt.Errorf("takes no arguments, got %q", strings.Join(got, " "))
		case len(got) != len(names):
			return fmt.Errorf("needs %s, got %s", strings.Join(names, " "), cmdline.Plural(len(got), "argument"))
		}
		return nil
	}
}

// vin normalises a VIN given on the command line: VINs are upper case (ISO 3779).
func vin(s string) string { return strings.ToUpper(strings.TrimSpace(s)) }

// whitelistOf shows the whitelist version and the version the car acknowledged.
func whitelistOf(v api.VehicleView) string {
	if v.Keys == nil {
		return "-"
	}
	if v.Keys.Version == 0 {
		return "none"
	}
	out := fmt.Sprintf("v%d (v%d)", v.Keys.Version, v.Keys.AckedVersion)
	if !v.Keys.InSync {
		out += " NOT YET ON THE CAR"
	}
	return out
}

func usersOf(users map[string]protocol.Role) string {
	if len(users) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(users))
	for u, r := range users {
		parts = append(parts, u+":"+string(r))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// encodeLine writes v as one JSON line (what vehicle-sim run --fleet reads).
func encodeLine(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }
