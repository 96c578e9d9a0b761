package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"telematics/pkg/api"
	"telematics/pkg/cmdline"
	"telematics/pkg/protocol"
)

func vehicleCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "vehicle", Short: "Provision cars, show them, give users roles on them, take them off the road"}
	cmd.AddCommand(vehicleAdd(o), vehicleList(o), vehicleShow(o), vehicleAssign(o), vehicleReissue(o),
		vehicleUnassign(o), vehicleTransfer(o), vehicleDecommission(o))
	return cmd
}

func vehicleAdd(o *options) *cobra.Command {
	var count int
	var certs certFlags
	cmd := &cobra.Command{
		Use:   "add [VIN...]",
		Short: "Provision cars; prints each car's credentials (--json: a list for vehicle-sim run --fleet)",
		Example: `  gateway admin vehicle add 1hgcm82633a004352        # VINs are upper-cased
  gateway admin vehicle add --count 100 --json > fleet.json
  gateway admin vehicle add 1HGCM82633A004352 --cert --cert-dir certs/`,
		Args: func(cmd *cobra.Command, vins []string) error {
			if len(vins) == 0 && count == 0 {
				return fmt.Errorf("needs VINs or --count N")
			}
			return certs.check()
		},
	}
	cmd.Flags().IntVar(&count, "count", 0, "how many cars to make up VINs for")
	cmdline.NoEnv(cmd, "count") // what one command does is said on its command line
	certs.register(cmd)
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		vins := make([]string, len(args))
		for i, a := range args {
			vins[i] = vin(a)
		}
		creds, err := c.AddVehicles(ctx, api.AddVehiclesRequest{VINs: vins, Count: count, Cert: certs.cert})
		if err != nil {
			return err
		}
		if o.json {
			for _, cr := range creds {
				if _, err := writeCertFilesIf(certs.dir, cr); err != nil {
					return err
				}
			}
			return encodeLine(cmd.OutOrStdout(), creds)
		}
		for _, cr := range creds {
			fmt.Fprintf(cmd.OutOrStdout(), "vin=%s client_id=%s username=%s\ntoken=%s\n", cr.VIN, cr.ClientID, cr.Username, cr.Token)
			if err := certs.output(cmd.OutOrStdout(), cr); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout())
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "%s added; keep the tokens secret (they are the cars' MQTT passwords)\n", cmdline.Plural(len(creds), "vehicle"))
		return nil
	})
	return cmd
}

func vehicleList(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "Every car with its twin (online, last telemetry) and whitelist", Args: args()}
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, _ []string) error {
		vs, err := c.Vehicles(ctx)
		if err != nil {
			return err
		}
		return o.print(cmd, vs, func(w io.Writer) error {
			t := cmdline.NewTable(w)
			t.Row("VIN", "STATUS", "LAST TELEMETRY", "WHITELIST (CAR)", "USERS")
			for _, v := range vs {
				t.Row(v.VIN, statusOf(v), telemetryOf(v), whitelistOf(v), usersOf(v.Users))
			}
			return t.Flush()
		})
	})
	return cmd
}

func statusOf(v api.VehicleView) string {
	if v.DecommissionedMs != 0 {
		return decommissionedStatus(v)
	}
	if v.Twin != nil && v.Twin.Status != "" {
		return v.Twin.Status
	}
	return "never seen"
}

func telemetryOf(v api.VehicleView) string {
	if v.Twin == nil {
		return "-"
	}
	return cmdline.Time(v.Twin.TelemetryMs)
}

// decommissionedStatus is a decommissioned car's STATUS in `vehicle list`.
func decommissionedStatus(v api.VehicleView) string {
	if v.RetiredMs != 0 {
		return "decommissioned (credentials retired)"
	}
	return "decommissioned (credentials retired once it acknowledges its empty whitelist)"
}

func vehicleShow(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "show VIN", Short: "One car: users, roles, whitelist and keys, twin", Args: args("VIN")}
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		var raw json.RawMessage // --json prints what the gateway sent
		if err := c.Do(ctx, http.MethodGet, "/v1/admin/vehicles/"+url.PathEscape(vin(args[0])), nil, &raw); err != nil {
			return err
		}
		if o.json {
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				return err
			}
			return cmdline.PrintJSON(cmd.OutOrStdout(), v)
		}
		var v api.VehicleView
		if err := json.Unmarshal(raw, &v); err != nil {
			return err
		}
		return printVehicle(cmd.OutOrStdout(), v)
	})
	return cmd
}

// printVehicle is `vehicle show` for people.
func printVehicle(w io.Writer, v api.VehicleView) error {
	t := cmdline.NewTable(w)
	t.Row("VIN", v.VIN)
	t.Row("provisioned", cmdline.Time(v.CreatedMs))
	t.Row("status", statusOf(v))
	if v.Twin != nil {
		t.Row("status since", cmdline.Time(v.Twin.StatusMs))
		t.Row("last telemetry", fmt.Sprintf("%s (seq %d)", cmdline.Time(v.Twin.TelemetryMs), v.Twin.TelemetrySeq))
	}
	if v.DecommissionedMs != 0 {
		t.Row("decommissioned", cmdline.Time(v.DecommissionedMs))
		t.Row("credentials retired", cmdline.Time(v.RetiredMs))
	}
	if v.CertSerial != "" {
		t.Row("device certificate", "serial "+v.CertSerial)
	}
	t.Row("users", usersOf(v.Users))
	t.Row("whitelist (car)", whitelistOf(v))
	if v.Keys != nil && v.Keys.AckedMs != 0 {
		t.Row("acknowledged", cmdline.Time(v.Keys.AckedMs))
	}
	if err := t.Flush(); err != nil {
		return err
	}
	if v.Keys != nil && len(v.Keys.Keys) > 0 {
		fmt.Fprintln(w, "\nkeys:")
		t := cmdline.NewTable(w)
		t.Row("  ID", "USER", "ROLE", "CHANNELS", "NOT AFTER", "REVOKED", "LABEL")
		for _, k := range v.Keys.Keys {
			label := k.Label
			if label == "" {
				label = "-"
			}
			t.Row("  "+k.ID, k.User, k.Role, strings.Join(k.Channels, ","), cmdline.Time(k.NotAfterMs), cmdline.Time(k.RevokedAtMs), label)
		}
		if err := t.Flush(); err != nil {
			return err
		}
	}
	if v.Twin != nil && len(v.Twin.Signals) > 0 {
		fmt.Fprintln(w, "\nsignals:")
		names := make([]string, 0, len(v.Twin.Signals))
		for n := range v.Twin.Signals {
			names = append(names, n)
		}
		sort.Strings(names)
		t := cmdline.NewTable(w)
		for _, n := range names {
			t.Row("  "+n, v.Twin.Signals[n])
		}
		return t.Flush()
	}
	return nil
}

func vehicleAssign(o *options) *cobra.Command {
	var role string
	cmd := &cobra.Command{
		Use:   "assign VIN USER --role ROLE",
		Short: "Give USER a role on VIN (owner, driver, valet; none removes them); their paired keys get it too",
		Args:  args("VIN", "USER"),
	}
	cmd.Flags().StringVar(&role, "role", "", "owner, driver, valet, or none to remove the user")
	cmdline.NoEnv(cmd, "role")
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		if role == "" {
			return cmdline.UsageError("--role is required: owner, driver, valet, or none to remove the user")
		}
		out, err := c.Assign(ctx, vin(args[0]), args[1], protocol.Role(role))
		if err != nil {
			return err
		}
		return o.print(cmd, out, func(w io.Writer) error { printRoleChange(w, out); return nil })
	})
	return cmd
}

func vehicleReissue(o *options) *cobra.Command {
	var certs certFlags
	cmd := &cobra.Command{
		Use:   "reissue VIN",
		Short: "New credentials for VIN; its old token (and certificate) stop working (--json: vehicle add --json's shape)",
		Args: func(cmd *cobra.Command, got []string) error {
			if err := args("VIN")(cmd, got); err != nil {
				return err
			}
			return certs.check()
		},
	}
	certs.register(cmd)
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		cr, err := c.Reissue(ctx, vin(args[0]), api.ReissueRequest{Cert: certs.cert})
		if err != nil {
			return err
		}
		if o.json {
			if _, err := writeCertFilesIf(certs.dir, cr); err != nil {
				return err
			}
			return encodeLine(cmd.OutOrStdout(), []protocol.Credentials{cr}) // feeds vehicle-sim run --fleet
		}
		fmt.Fprintf(cmd.OutOrStdout(), "vin=%s client_id=%s username=%s\ntoken=%s\n", cr.VIN, cr.ClientID, cr.Username, cr.Token)
		if err := certs.output(cmd.OutOrStdout(), cr); err != nil {
			return err
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "%s has new credentials; its previous token is refused from now on, and so is its previous device certificate if it had one (embedded and standalone broker)\n", cr.VIN)
		return nil
	})
	return cmd
}

func vehicleUnassign(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "unassign VIN USER", Short: "Remove USER from VIN: keys revoked, role and share ended", Args: args("VIN", "USER")}
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		out, err := c.Unassign(ctx, vin(args[0]), args[1])
		if err != nil {
			return err
		}
		return o.print(cmd, out, func(w io.Writer) error { printRoleChange(w, out); return nil })
	})
	return cmd
}

func vehicleTransfer(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "transfer VIN NEWOWNER", Short: "Give VIN to NEWOWNER: every other user and every key removed", Args: args("VIN", "NEWOWNER")}
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		out, err := c.Transfer(ctx, vin(args[0]), args[1])
		if err != nil {
			return err
		}
		return o.print(cmd, out, func(w io.Writer) error {
			fmt.Fprintf(w, "%s now belongs to %s alone; removed: users %s, %s%s\n", out.VIN, out.Owner,
				listOrNone(out.UsersRemoved), cmdline.Plural(out.KeysRemoved, "key"), versionNote(out.Version))
			fmt.Fprintf(w, "%s pairs a phone with: vehicle-sim app key pair %s --totp CODE\n", out.Owner, out.VIN)
			return nil
		})
	})
	return cmd
}

func vehicleDecommission(o *options) *cobra.Command {
	var now bool
	cmd := &cobra.Command{
		Use:   "decommission VIN",
		Short: "All keys and users removed, an empty whitelist sent; the car's credentials retired once it acknowledged it (or now)",
		Args:  args("VIN"),
	}
	cmd.Flags().BoolVar(&now, "retire-now", false, "retire the car's credentials at once, without waiting for it to acknowledge its empty whitelist")
	cmdline.NoEnv(cmd, "retire-now")
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		out, err := c.Decommission(ctx, vin(args[0]), now)
		if err != nil {
			return err
		}
		return o.print(cmd, out, func(w io.Writer) error {
			fmt.Fprintf(w, "%s decommissioned: users %s and %s removed; empty whitelist version %d sent\n",
				out.VIN, listOrNone(out.UsersRemoved), cmdline.Plural(out.KeysRemoved, "key"), out.Version)
			if out.CredentialsRetired {
				fmt.Fprintf(w, "its credentials are retired: every token of %s is refused from now on\n", out.VIN)
			} else {
				fmt.Fprintf(w, "its credentials are retired once it acknowledges version %d (see: gateway admin vehicle show %s);\n"+
					"for a car that will not come back: gateway admin vehicle decommission %s --retire-now\n", out.Version, out.VIN, out.VIN)
			}
			return nil
		})
	})
	return cmd
}

func keyCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Digital keys on cars"}
	var keep bool
	revoke := &cobra.Command{
		Use:   "revoke VIN KEYID",
		Short: "Revoke one key; a driver's or valet's last key ends their share",
		Long: `Revoke one key; a driver's or valet's last key ends their share (--keep-share keeps it).
A key id that starts with - follows --: gateway admin key revoke VIN -- -AbC...`,
		Args: args("VIN", "KEYID"),
	}
	revoke.Flags().BoolVar(&keep, "keep-share", false, "keep the share of a driver or valet whose last key this is")
	cmdline.NoEnv(revoke, "keep-share")
	revoke.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		out, err := c.AdminRevokeKey(ctx, vin(args[0]), args[1], keep)
		if err != nil {
			return err
		}
		return o.print(cmd, out, func(w io.Writer) error {
			fmt.Fprintf(w, "key %s of %s revoked on %s%s\n", out.KeyID, out.User, out.VIN, versionNote(out.Version))
			if out.ShareEnded {
				fmt.Fprintf(w, "it was %s's last key: their share of %s ended (--keep-share keeps it)\n", out.User, out.VIN)
			}
			return nil
		})
	})
	cmd.AddCommand(revoke)
	return cmd
}

// printRoleChange reports an assignment or removal.
func printRoleChange(w io.Writer, out api.RoleChange) {
	if out.Role == api.RoleNone {
		fmt.Fprintf(w, "%s removed from %s: %s revoked%s\n", out.User, out.VIN, cmdline.Plural(out.KeysChanged, "key"), versionNote(out.Version))
		return
	}
	fmt.Fprintf(w, "%s is now %s of %s", out.User, out.Role, out.VIN)
	if out.KeysChanged > 0 {
		fmt.Fprintf(w, "; %d of their keys rewritten", out.KeysChanged)
	}
	fmt.Fprintf(w, "%s\n", versionNote(out.Version))
}

// versionNote says which whitelist version carries a change to the car.
func versionNote(v uint64) string {
	if v == 0 {
		return " (no whitelist change)"
	}
	return fmt.Sprintf(" in whitelist version %d (the car applies it once it acknowledges it)", v)
}

func listOrNone(users []string) string {
	if len(users) == 0 {
		return "none"
	}
	return strings.Join(users, ",")
}
