package appcmd

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"telematics/pkg/cmdline"
)

// passwordCommand changes the logged-in user's password. At a terminal both passwords are
// prompted for without echo (the new one twice); otherwise stdin holds the current and the new
// one, one per line. The gateway ends every other token and session of the user and returns a
// new token, which replaces the one in the session file.
func passwordCommand(g *globals, env Env) *cobra.Command {
	return &cobra.Command{
		Use:   "password",
		Short: "change the password (prompted for, or current and new on stdin); ends every other session",
		Long: `Changes the logged-in user's password. At a terminal the current and the new password are
prompted for without echo (the new one twice); otherwise stdin holds the current and the new
one, one per line (printf 'old\nnew\n' | vehicle-sim app password). Every other session of the
user ends; this one continues with a new token.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sess, err := LoadSession(g.session)
			if err != nil {
				return err
			}
			read := func(prompt string, confirm bool) (string, error) {
				pw, err := cmdline.ReadPassword(env.Stdin, env.Stderr, prompt, confirm)
				if errors.Is(err, cmdline.ErrNoPassword) {
					return "", cmdline.UsageError("give the current and the new password on stdin, one per line")
				}
				return pw, err
			}
			old, err := read("current password: ", false)
			if err != nil {
				return err
			}
			pw, err := read("new password: ", true)
			if err != nil {
				return err
			}
			out, err := sess.Client().ChangePassword(cmd.Context(), old, pw)
			if err != nil {
				return err
			}
			sess.Token, sess.ExpiresAtMs = out.Token, out.ExpiresAtMs
			if err := SaveSession(g.session, sess); err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "password of %s changed; every other session was logged out; this one is valid until %s\n",
				sess.User, cmdline.Time(sess.ExpiresAtMs))
			return nil
		},
	}
}
