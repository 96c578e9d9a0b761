package admin

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"telematics/pkg/api"
	"telematics/pkg/cmdline"
)

func userCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Users: create, list, lockouts, 2FA reset, disable, password, delete"}
	cmd.AddCommand(userAdd(o), userList(o), userPassword(o),
		userAction(o, "reset-2fa", "Remove NAME's TOTP enrollment and clear any lockout (audited)", "reset-2fa",
			func(name string) string {
				return "two-factor authentication of " + name + " reset (if enrolled) and any lockout cleared; they can enroll again"
			}),
		userAction(o, "unlock", "Clear NAME's password and 2FA lockouts, keep the enrollment", "unlock",
			func(name string) string {
				return "lockouts of " + name + " cleared (password and 2FA); the TOTP enrollment is kept"
			}),
		userAction(o, "disable", "Refuse NAME's logins and end their tokens and sessions", "disable",
			func(name string) string {
				return name + " is disabled: logins refused, every app token and session ended"
			}),
		userAction(o, "enable", "Allow a disabled user to log in again", "enable",
			func(name string) string { return name + " is enabled and may log in again" }),
		userDelete(o))
	return cmd
}

// readPassword prompts without echo on a terminal, else reads one line of stdin.
func readPassword(cmd *cobra.Command, name string) (string, error) {
	return cmdline.ReadPassword(cmd.InOrStdin(), cmd.ErrOrStderr(), "Password for "+name+": ", true)
}

func userAdd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "Create a user; the password is prompted for (no echo) or read from stdin",
		Example: `  gateway admin user add alice                       # prompts twice, without echo
  printf '%s\n' "$PASSWORD" | gateway admin user add alice`,
		Args: args("NAME"),
	}
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		pw, err := readPassword(cmd, args[0])
		if err != nil {
			return err
		}
		if err := c.AddUser(ctx, args[0], pw); err != nil {
			return err
		}
		return o.print(cmd, map[string]any{"user": args[0], "added": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "user %s added\n", args[0])
			return err
		})
	})
	return cmd
}

func userPassword(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "password NAME",
		Short: "Set NAME's password (prompted for, or read from stdin); ends their tokens",
		Args:  args("NAME"),
	}
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		pw, err := readPassword(cmd, args[0])
		if err != nil {
			return err
		}
		if _, err := c.SetPassword(ctx, args[0], pw); err != nil {
			return err
		}
		return o.print(cmd, map[string]any{"user": args[0], "password_set": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "password of %s set; every app token and session of theirs ended\n", args[0])
			return err
		})
	})
	return cmd
}

// userAction is a command NAME that POSTs to /v1/admin/users/NAME/PATH.
func userAction(o *options, use, short, path string, done func(name string) string) *cobra.Command {
	cmd := &cobra.Command{Use: use + " NAME", Short: short, Args: args("NAME")}
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		res, err := c.UserAction(ctx, args[0], path)
		if err != nil {
			return err
		}
		res.User = args[0]
		return o.print(cmd, res, func(w io.Writer) error {
			msg := done(args[0])
			if res.EnrollmentRemoved != nil && !*res.EnrollmentRemoved {
				msg = args[0] + " had no TOTP enrollment; any lockout is cleared"
			}
			_, err := fmt.Fprintln(w, msg)
			return err
		})
	})
	return cmd
}

func userDelete(o *options) *cobra.Command {
	var fromCars bool
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Remove a user (refused while they hold a role on a car, unless --from-cars)",
		Args:  args("NAME"),
	}
	cmd.Flags().BoolVar(&fromCars, "from-cars", false, "first remove the user from every car (keys revoked, roles ended)")
	cmdline.NoEnv(cmd, "from-cars") // never from the environment: it removes the user from every car
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		if _, err := c.DeleteUser(ctx, args[0], fromCars); err != nil {
			return err
		}
		return o.print(cmd, map[string]any{"user": args[0], "deleted": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "user %s deleted, with their TOTP enrollment; their tokens no longer work\n", args[0])
			return err
		})
	})
	return cmd
}

func userList(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "Every user: active or disabled, 2FA, lockouts, vehicles", Args: args()}
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, _ []string) error {
		us, err := c.Users(ctx)
		if err != nil {
			return err
		}
		return o.print(cmd, us, func(w io.Writer) error {
			t := cmdline.NewTable(w)
			t.Row("USER", "STATE", "2FA", "LOCKED UNTIL", "VEHICLES")
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
					ends = append(ends, "password "+cmdline.Time(u.PasswordLockedUntilMs))
				}
				if u.TOTPLockedUntilMs > 0 {
					ends = append(ends, "2fa "+cmdline.Time(u.TOTPLockedUntilMs))
				}
				if len(ends) > 0 {
					locked = strings.Join(ends, ", ")
				}
				var cars []string
				for v, role := range u.Vehicles {
					cars = append(cars, v+":"+string(role))
				}
				sort.Strings(cars)
				vehicles := "-"
				if len(cars) > 0 {
					vehicles = strings.Join(cars, ",")
				}
				t.Row(u.Name, state, twofa, locked, vehicles)
			}
			return t.Flush()
		})
	})
	return cmd
}
