package admin

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"telematics/pkg/api"
)

func operatorCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "operator", Short: "Console operators: add (admin or viewer), list, remove"}
	cmd.AddCommand(operatorAdd(o), operatorList(o), operatorRemove(o))
	return cmd
}

func operatorAdd(o *options) *cobra.Command {
	var role string
	cmd := &cobra.Command{
		Use:   "add NAME --role admin|viewer",
		Short: "Create a console operator; the password is prompted for (no echo) or read from stdin",
		Long: `Create a console operator. At the first login in the console the operator enrolls an
authenticator app (a QR code is shown); every later login asks for the password and a code.
A viewer sees everything; only an admin may change anything.`,
		Example: `  gateway admin operator add alice --role admin          # prompts twice, without echo
  printf '%s\n' "$PASSWORD" | gateway admin operator add bob --role viewer`,
		Args: args("NAME"),
	}
	cmd.Flags().StringVar(&role, "role", "", "`admin` or viewer (required)")
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		if role != "admin" && role != "viewer" {
			return fmt.Errorf("--role is admin or viewer, got %q", role)
		}
		pw, err := readPassword(cmd, args[0])
		if err != nil {
			return err
		}
		op, err := c.AddOperator(ctx, args[0], role, pw)
		if err != nil {
			return err
		}
		return o.print(cmd, op, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "operator %s added (%s); they enroll TOTP at their first console login\n", op.Name, op.Role)
			return err
		})
	})
	return cmd
}

func operatorList(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List the console operators", Args: args()}
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, _ []string) error {
		ops, err := c.Operators(ctx)
		if err != nil {
			return err
		}
		return o.print(cmd, ops, func(w io.Writer) error {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tROLE\tTOTP")
			for _, op := range ops {
				totp := "not enrolled"
				if op.TOTPEnrolled {
					totp = "enrolled"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", op.Name, op.Role, totp)
			}
			return tw.Flush()
		})
	})
	return cmd
}

func operatorRemove(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a console operator: their sessions end and their TOTP enrollment goes",
		Args:  args("NAME"),
	}
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, args []string) error {
		res, err := c.RemoveOperator(ctx, args[0])
		if err != nil {
			return err
		}
		return o.print(cmd, res, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "operator %s removed; their console sessions are ended\n", res.Name)
			return err
		})
	})
	return cmd
}
