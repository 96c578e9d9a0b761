package admin

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"telematics/gateway/httpapi"
	"telematics/pkg/cmdline"
)

// userCommand runs the `user …` commands of offboarding and lockouts; handled is false for
// any other command.
func (c *client) userCommand(ctx context.Context, args []string, env Env) (handled bool, err error) {
	if args[0] != "user" || len(args) < 2 {
		return false, nil
	}
	one := func() (string, error) {
		if len(args) != 3 {
			return "", usageError("user " + args[1] + " needs one NAME")
		}
		return args[2], nil
	}
	post := func(path string, in any) error {
		return c.call(ctx, http.MethodPost, path, in, nil)
	}
	switch args[1] {
	case "list":
		fs := flag.NewFlagSet("user list", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		asJSON := fs.Bool("json", false, "print JSON")
		if err := fs.Parse(args[2:]); err != nil {
			return true, usageError(err.Error())
		}
		var us []httpapi.UserView
		if err := c.call(ctx, http.MethodGet, "/v1/admin/users", nil, &us); err != nil {
			return true, err
		}
		if *asJSON {
			return true, json.NewEncoder(env.Stdout).Encode(us)
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "USER\tSTATE\t2FA\tLOCKED UNTIL\tVEHICLES")
		for _, u := range us {
			state, twofa, locked := "active", "no", "-"
			if u.Disabled {
				state = "DISABLED"
			}
			if u.TOTPEnrolled {
				twofa = "yes"
			}
			var ends []string
			if u.PasswordLockedUntilMs > 0 {
				ends = append(ends, "password "+time.UnixMilli(u.PasswordLockedUntilMs).Format(time.RFC3339))
			}
			if u.TOTPLockedUntilMs > 0 {
				ends = append(ends, "2fa "+time.UnixMilli(u.TOTPLockedUntilMs).Format(time.RFC3339))
			}
			if len(ends) > 0 {
				locked = strings.Join(ends, ", ")
			}
			var cars []string
			for vin, role := range u.Vehicles {
				cars = append(cars, vin+":"+string(role))
			}
			sort.Strings(cars)
			vehicles := "-"
			if len(cars) > 0 {
				vehicles = strings.Join(cars, ",")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", u.Name, state, twofa, locked, vehicles)
		}
		return true, tw.Flush()
	case "unlock":
		name, err := one()
		if err != nil {
			return true, err
		}
		if err := post("/v1/admin/users/"+name+"/unlock", struct{}{}); err != nil {
			return true, err
		}
		fmt.Fprintf(env.Stdout, "lockouts of %s cleared (password and 2FA); the TOTP enrollment is kept\n", name)
		return true, nil
	case "disable", "enable":
		name, err := one()
		if err != nil {
			return true, err
		}
		if err := post("/v1/admin/users/"+name+"/"+args[1], struct{}{}); err != nil {
			return true, err
		}
		if args[1] == "disable" {
			fmt.Fprintf(env.Stdout, "%s is disabled: logins refused, every app token and session ended\n", name)
		} else {
			fmt.Fprintf(env.Stdout, "%s is enabled and may log in again\n", name)
		}
		return true, nil
	case "delete":
		fs := flag.NewFlagSet("user delete", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		fromCars := fs.Bool("from-cars", false, "first remove the user from every car (keys revoked, roles ended)")
		var name string
		rest := args[2:]
		if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
			name, rest = rest[0], rest[1:]
		}
		if err := fs.Parse(rest); err != nil {
			return true, usageError(err.Error())
		}
		if name == "" && fs.NArg() == 1 {
			name = fs.Arg(0)
		} else if name == "" || fs.NArg() != 0 {
			return true, usageError("user delete needs one NAME")
		}
		path := "/v1/admin/users/" + name
		if *fromCars {
			path += "?from_cars=true"
		}
		if err := c.call(ctx, http.MethodDelete, path, nil, nil); err != nil {
			return true, err
		}
		fmt.Fprintf(env.Stdout, "user %s deleted, with their TOTP enrollment; their tokens no longer work\n", name)
		return true, nil
	case "password":
		name, err := one()
		if err != nil {
			return true, err
		}
		pw, err := cmdline.ReadPasswordLine(env.Stdin)
		if err != nil {
			return true, err
		}
		if err := post("/v1/admin/users/"+name+"/password", httpapi.PasswordRequest{Password: pw}); err != nil {
			return true, err
		}
		fmt.Fprintf(env.Stdout, "password of %s set; every app token and session of theirs ended\n", name)
		return true, nil
	}
	return false, nil
}
