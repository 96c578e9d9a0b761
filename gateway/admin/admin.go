// Package admin is `gateway admin …`: a command-line client of the running gateway's admin
// API (vehicles, users, assignments, audit).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"telematics/gateway/httpapi"
	"telematics/gateway/keys"
	"telematics/pkg/cmdline"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// Env is what a command reads and writes.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

type client struct {
	server string
	token  string
}

const usage = `usage: gateway admin [--server URL] [--token-file FILE] COMMAND

commands:
  vehicle add [VIN…] [--count N] [--json]   provision cars; prints each car's credentials
  vehicle list [--json]                       every car with its twin (online, last telemetry)
  vehicle show VIN                            one car: users, roles, twin
  vehicle assign VIN USER --role ROLE         give USER a role on VIN (owner, driver, valet; none
                                              removes them); their paired keys get it too
  vehicle reissue VIN [--json]                new credentials for VIN; its old token stops working
` + offboardUsage + `  user add NAME                               create a user; the password is read from stdin
  user reset-2fa NAME                         remove NAME's TOTP enrollment, clear any lockout (audited)
  user list [--json]                          every user: active or disabled, 2FA, lockouts, vehicles
  user unlock NAME                            clear NAME's password and 2FA lockouts, keep the enrollment
  user disable NAME | user enable NAME        refuse NAME's logins and end their tokens; or allow again
  user password NAME                          set NAME's password (read from stdin); ends their tokens
  user delete NAME [--from-cars]              remove a user (refused while they hold a role on a car,
                                              unless --from-cars removes them from every car first)
  audit [--vin VIN] [--user U] [--kind K] [--limit N]
`

// Run executes `gateway admin ARGS…` and returns the exit code.
func Run(ctx context.Context, args []string, env Env) int {
	fs := flag.NewFlagSet("gateway admin", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	server := fs.String("server", envOr("GATEWAY_ADMIN_SERVER", "http://127.0.0.1:8080"), "gateway URL")
	tokenFile := fs.String("token-file", envOr("GATEWAY_ADMIN_TOKEN_FILE", "./data/admin.token"), "file holding the admin token")
	fs.Usage = func() { fmt.Fprint(env.Stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0 // asked for the usage, got it
		}
		return 2
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	tok, err := os.ReadFile(*tokenFile)
	if err != nil {
		fmt.Fprintf(env.Stderr, "gateway admin: cannot read the admin token: %v\n(the gateway writes it to DATA/admin.token on start; pass --token-file)\n", err)
		return 1
	}
	c := &client{server: strings.TrimRight(*server, "/"), token: strings.TrimSpace(string(tok))}
	err = c.dispatch(ctx, rest, env)
	var usageErr usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &usageErr):
		fmt.Fprintf(env.Stderr, "gateway admin: %v\n\n", err)
		fmt.Fprint(env.Stderr, usage)
		return 2
	default:
		fmt.Fprintf(env.Stderr, "gateway admin: %v\n", err)
		return 1
	}
}

type usageError string

func (e usageError) Error() string { return string(e) }

func envOr(k, def string) string {
	if v, ok := os.LookupEnv(k); ok && v != "" {
		return v
	}
	return def
}

func (c *client) call(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return phone.Call(ctx, method, c.server+path, c.token, in, out)
}

func (c *client) dispatch(ctx context.Context, args []string, env Env) error {
	if len(args) < 2 && args[0] != "audit" {
		return usageError("missing command")
	}
	if handled, err := c.offboard(ctx, args, env); handled {
		return err
	}
	switch args[0] + " " + first(args[1:]) {
	case "vehicle add":
		fs := flag.NewFlagSet("vehicle add", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		count := fs.Int("count", 0, "how many cars to make up VINs for")
		asJSON := fs.Bool("json", false, "print a JSON list of credentials")
		vins, err := cmdline.Interleaved(fs, args[2:])
		if err != nil {
			return usageError(err.Error())
		}
		if len(vins) == 0 && *count == 0 {
			return usageError("vehicle add needs VINs or --count N")
		}
		var creds []protocol.Credentials
		if err := c.call(ctx, http.MethodPost, "/v1/admin/vehicles", httpapi.AddVehiclesRequest{VINs: vins, Count: *count}, &creds); err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(env.Stdout).Encode(creds)
		}
		for _, cr := range creds {
			fmt.Fprintf(env.Stdout, "vin=%s client_id=%s username=%s\ntoken=%s\n\n", cr.VIN, cr.ClientID, cr.Username, cr.Token)
		}
		fmt.Fprintf(env.Stderr, "%d vehicles added; keep the tokens secret (they are the cars' MQTT passwords)\n", len(creds))
		return nil
	case "vehicle list":
		fs := flag.NewFlagSet("vehicle list", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		asJSON := fs.Bool("json", false, "print JSON")
		if err := fs.Parse(args[2:]); err != nil {
			return usageError(err.Error())
		}
		var vs []httpapi.VehicleView
		if err := c.call(ctx, http.MethodGet, "/v1/admin/vehicles", nil, &vs); err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(env.Stdout).Encode(vs)
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VIN\tSTATUS\tLAST TELEMETRY\tWHITELIST (CAR)\tUSERS")
		for _, v := range vs {
			status, last := "never seen", "-"
			if v.Twin != nil {
				if v.Twin.Status != "" {
					status = v.Twin.Status
				}
				if v.Twin.TelemetryMs > 0 {
					last = time.UnixMilli(v.Twin.TelemetryMs).Format(time.RFC3339)
				}
			}
			if v.DecommissionedMs != 0 {
				status = decommissionedStatus(v)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.VIN, status, last, whitelistOf(v), usersOf(v))
		}
		return tw.Flush()
	case "vehicle show":
		if len(args) != 3 {
			return usageError("vehicle show needs one VIN")
		}
		var v json.RawMessage
		if err := c.call(ctx, http.MethodGet, "/v1/admin/vehicles/"+args[2], nil, &v); err != nil {
			return err
		}
		return printIndented(env.Stdout, v)
	case "vehicle assign":
		fs := flag.NewFlagSet("vehicle assign", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		role := fs.String("role", "", "owner, driver, valet, or none to remove the user")
		pos, err := cmdline.Interleaved(fs, args[2:])
		if err != nil {
			return usageError(err.Error())
		}
		if len(pos) != 2 || *role == "" {
			return usageError("vehicle assign needs VIN USER --role owner|driver|valet|none")
		}
		var out keys.RoleChange
		if err := c.call(ctx, http.MethodPost, "/v1/admin/vehicles/"+pos[0]+"/assign", httpapi.AssignRequest{User: pos[1], Role: protocol.Role(*role)}, &out); err != nil {
			return err
		}
		printRoleChange(env, out)
		return nil
	case "vehicle reissue":
		fs := flag.NewFlagSet("vehicle reissue", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		asJSON := fs.Bool("json", false, "print a JSON list of credentials, as vehicle add --json does (for vehicle-sim run --fleet)")
		pos, err := cmdline.Interleaved(fs, args[2:])
		if err != nil {
			return usageError(err.Error())
		}
		if len(pos) != 1 {
			return usageError("vehicle reissue needs one VIN")
		}
		var cr protocol.Credentials
		if err := c.call(ctx, http.MethodPost, "/v1/admin/vehicles/"+pos[0]+"/credentials", struct{}{}, &cr); err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(env.Stdout).Encode([]protocol.Credentials{cr})
		}
		fmt.Fprintf(env.Stdout, "vin=%s client_id=%s username=%s\ntoken=%s\n", cr.VIN, cr.ClientID, cr.Username, cr.Token)
		fmt.Fprintf(env.Stderr, "%s has new credentials; its previous token is refused from now on (embedded and standalone broker)\n", cr.VIN)
		return nil
	case "user add":
		if len(args) != 3 {
			return usageError("user add needs one NAME (the password is read from stdin)")
		}
		pw, err := cmdline.ReadPasswordLine(env.Stdin)
		if err != nil {
			return err
		}
		if err := c.call(ctx, http.MethodPost, "/v1/admin/users", httpapi.AddUserRequest{Username: args[2], Password: pw}, nil); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "user %s added\n", args[2])
		return nil
	case "user reset-2fa":
		if len(args) != 3 {
			return usageError("user reset-2fa needs one NAME")
		}
		var res struct {
			Removed bool `json:"enrollment_removed"`
		}
		if err := c.call(ctx, http.MethodPost, "/v1/admin/users/"+args[2]+"/reset-2fa", nil, &res); err != nil {
			return err
		}
		if res.Removed {
			fmt.Fprintf(env.Stdout, "two-factor authentication of %s reset and any lockout cleared; they can enroll again\n", args[2])
		} else {
			fmt.Fprintf(env.Stdout, "%s had no TOTP enrollment; any lockout is cleared\n", args[2])
		}
		return nil
	}
	if handled, err := c.userCommand(ctx, args, env); handled {
		return err
	}
	if args[0] == "audit" {
		fs := flag.NewFlagSet("audit", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		vin := fs.String("vin", "", "only this car")
		user := fs.String("user", "", "only this user")
		kind := fs.String("kind", "", "only this kind (command, result, login, 2fa, keys, admin, vehicle, late_reply)")
		limit := fs.Int("limit", 50, "newest N records")
		if err := fs.Parse(args[1:]); err != nil {
			return usageError(err.Error())
		}
		q := url.Values{"vin": {*vin}, "user": {*user}, "kind": {*kind}, "limit": {strconv.Itoa(*limit)}}
		var evs []json.RawMessage
		if err := c.call(ctx, http.MethodGet, "/v1/admin/audit?"+q.Encode(), nil, &evs); err != nil {
			return err
		}
		for _, e := range evs {
			fmt.Fprintln(env.Stdout, string(e))
		}
		return nil
	}
	return usageError(fmt.Sprintf("unknown command %q", strings.Join(args, " ")))
}

func first(a []string) string {
	if len(a) == 0 {
		return ""
	}
	return a[0]
}

// whitelistOf shows the whitelist version and the version the car acknowledged.
func whitelistOf(v httpapi.VehicleView) string {
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

func usersOf(v httpapi.VehicleView) string {
	if len(v.Users) == 0 {
		return "-"
	}
	var parts []string
	for u, r := range v.Users {
		parts = append(parts, u+":"+string(r))
	}
	return strings.Join(parts, ",")
}

func printIndented(w io.Writer, raw json.RawMessage) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
