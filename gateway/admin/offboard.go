package admin

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"telematics/gateway/httpapi"
	"telematics/gateway/keys"
	"telematics/pkg/cmdline"
)

// offboardUsage lists the commands of this file, for the usage text.
const offboardUsage = `  vehicle unassign VIN USER                   remove USER from VIN: keys revoked, role and share ended
  vehicle transfer VIN NEWOWNER               give VIN to NEWOWNER: every other user and every key removed
  vehicle decommission VIN [--retire-now]     all keys and users removed, an empty whitelist sent; the
                                              car's credentials retired once it acknowledged it (or now)
  key revoke VIN KEYID [--keep-share]         revoke one key; a driver's or valet's last key ends their share
`

// offboard runs the commands that take users and keys off cars; handled is false for any
// other command.
func (c *client) offboard(ctx context.Context, args []string, env Env) (handled bool, err error) {
	if len(args) < 2 {
		return false, nil
	}
	cmd := args[0] + " " + args[1]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	switch cmd {
	case "vehicle unassign":
		pos, err := cmdline.Interleaved(fs, args[2:])
		if err != nil || len(pos) != 2 {
			return true, usageError("vehicle unassign needs VIN USER")
		}
		var out keys.RoleChange
		if err := c.call(ctx, http.MethodPost, "/v1/admin/vehicles/"+url.PathEscape(pos[0])+"/unassign", httpapi.UnassignRequest{User: pos[1]}, &out); err != nil {
			return true, err
		}
		printRoleChange(env, out)
		return true, nil
	case "vehicle transfer":
		pos, err := cmdline.Interleaved(fs, args[2:])
		if err != nil || len(pos) != 2 {
			return true, usageError("vehicle transfer needs VIN NEWOWNER")
		}
		var out keys.Transfer
		if err := c.call(ctx, http.MethodPost, "/v1/admin/vehicles/"+url.PathEscape(pos[0])+"/transfer", httpapi.TransferRequest{Owner: pos[1]}, &out); err != nil {
			return true, err
		}
		fmt.Fprintf(env.Stdout, "%s now belongs to %s alone; removed: users %s, %d keys%s\n", out.VIN, out.Owner,
			listOrNone(out.UsersRemoved), out.KeysRemoved, versionNote(out.Version))
		fmt.Fprintf(env.Stdout, "%s pairs a phone with: vehicle-sim app key pair %s --totp CODE\n", out.Owner, out.VIN)
		return true, nil
	case "vehicle decommission":
		now := fs.Bool("retire-now", false, "retire the car's credentials at once, without waiting for it to acknowledge its empty whitelist")
		pos, err := cmdline.Interleaved(fs, args[2:])
		if err != nil || len(pos) != 1 {
			return true, usageError("vehicle decommission needs one VIN")
		}
		var out keys.Decommission
		if err := c.call(ctx, http.MethodPost, "/v1/admin/vehicles/"+url.PathEscape(pos[0])+"/decommission", httpapi.DecommissionRequest{RetireNow: *now}, &out); err != nil {
			return true, err
		}
		fmt.Fprintf(env.Stdout, "%s decommissioned: users %s and %d keys removed; empty whitelist version %d sent\n",
			out.VIN, listOrNone(out.UsersRemoved), out.KeysRemoved, out.Version)
		if out.CredentialsRetired {
			fmt.Fprintf(env.Stdout, "its credentials are retired: every token of %s is refused from now on\n", out.VIN)
		} else {
			fmt.Fprintf(env.Stdout, "its credentials are retired once it acknowledges version %d (see: gateway admin vehicle show %s);\n"+
				"for a car that will not come back: gateway admin vehicle decommission %s --retire-now\n", out.Version, out.VIN, out.VIN)
		}
		return true, nil
	case "key revoke":
		keep := fs.Bool("keep-share", false, "keep the share of a driver or valet whose last key this is")
		pos, err := cmdline.Interleaved(fs, args[2:])
		if err != nil || len(pos) != 2 {
			return true, usageError("key revoke needs VIN KEYID")
		}
		var out keys.Revocation
		path := "/v1/admin/vehicles/" + url.PathEscape(pos[0]) + "/keys/" + url.PathEscape(pos[1]) + "/revoke"
		if err := c.call(ctx, http.MethodPost, path, httpapi.AdminRevokeRequest{KeepShare: *keep}, &out); err != nil {
			return true, err
		}
		fmt.Fprintf(env.Stdout, "key %s of %s revoked on %s%s\n", out.KeyID, out.User, out.VIN, versionNote(out.Version))
		if out.ShareEnded {
			fmt.Fprintf(env.Stdout, "it was %s's last key: their share of %s ended (--keep-share keeps it)\n", out.User, out.VIN)
		}
		return true, nil
	}
	return false, nil
}

// decommissionedStatus is a decommissioned car's STATUS in `vehicle list`.
func decommissionedStatus(v httpapi.VehicleView) string {
	if v.RetiredMs != 0 {
		return "decommissioned (credentials retired)"
	}
	return "decommissioned (credentials retired once it acknowledges its empty whitelist)"
}

// printRoleChange reports an assignment or removal.
func printRoleChange(env Env, out keys.RoleChange) {
	if out.Role == keys.RoleNone {
		fmt.Fprintf(env.Stdout, "%s removed from %s: %d keys revoked%s\n", out.User, out.VIN, out.KeysChanged, versionNote(out.Version))
		return
	}
	fmt.Fprintf(env.Stdout, "%s is now %s of %s", out.User, out.Role, out.VIN)
	if out.KeysChanged > 0 {
		fmt.Fprintf(env.Stdout, "; %d of their keys rewritten", out.KeysChanged)
	}
	fmt.Fprintf(env.Stdout, "%s\n", versionNote(out.Version))
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
