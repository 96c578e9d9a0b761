package appcmd

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"

	"github.com/mdp/qrterminal/v3"
	"github.com/spf13/cobra"

	"telematics/pkg/api"
	"telematics/pkg/cmdline"
)

// totpCommand is `vehicle-sim app totp enroll|confirm|disable|status`.
func totpCommand(g *globals, env Env) *cobra.Command {
	totp := &cobra.Command{
		Use:   "totp COMMAND",
		Short: "two-factor authentication: enroll, confirm, disable, status",
		RunE: func(*cobra.Command, []string) error {
			return cmdline.UsageError("need enroll, confirm CODE, disable CODE or status")
		},
	}
	// client is the gateway's API with the session's token.
	client := func() (*api.Client, error) {
		sess, err := LoadSession(g.session)
		if err != nil {
			return nil, err
		}
		return sess.Client(), nil
	}

	var qrFile, proof string
	var enrollJSON bool
	enroll := &cobra.Command{
		Use:   "enroll",
		Short: "start 2FA enrollment: QR code, otpauth URL, secret",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			e, err := c.EnrollTOTP(cmd.Context(), proof)
			if err != nil {
				return err
			}
			if qrFile != "" {
				png, err := base64.StdEncoding.DecodeString(e.QRPNG)
				if err != nil {
					return fmt.Errorf("gateway sent a damaged QR code: %w", err)
				}
				if err := os.WriteFile(qrFile, png, 0o600); err != nil {
					return err
				}
			}
			if enrollJSON {
				return json.NewEncoder(env.Stdout).Encode(map[string]string{"otpauth_url": e.OTPAuthURL, "secret": e.Secret})
			}
			fmt.Fprintln(env.Stdout, "Scan this with your authenticator app:")
			qrterminal.GenerateHalfBlock(e.OTPAuthURL, qrterminal.L, env.Stdout)
			fmt.Fprintf(env.Stdout, "\n%s\n\nOr type the secret by hand: %s\n", e.OTPAuthURL, e.Secret)
			if qrFile != "" {
				fmt.Fprintf(env.Stdout, "QR code written to %s\n", qrFile)
			}
			fmt.Fprintln(env.Stdout, "Then activate it: vehicle-sim app totp confirm CODE")
			return nil
		},
	}
	enroll.Flags().StringVar(&qrFile, "qr", "", "also write the QR code as a PNG `FILE`")
	enroll.Flags().BoolVar(&enrollJSON, "json", false, `print {"otpauth_url", "secret"} only`)
	enroll.Flags().StringVar(&proof, "proof", "", "a current code or a recovery code, to replace an active enrollment")

	var confirmJSON bool
	confirm := &cobra.Command{
		Use:   "confirm CODE",
		Short: "activate 2FA with the code your authenticator shows; prints ten single-use recovery codes",
		Args:  exactly(1, "the CODE your authenticator shows"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			codes, err := c.ConfirmTOTP(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if confirmJSON {
				return printJSON(env, api.TOTPConfirmation{RecoveryCodes: codes})
			}
			fmt.Fprintln(env.Stdout, "Two-factor authentication is active. Recovery codes (each works once; shown only now):")
			for _, c := range codes {
				fmt.Fprintln(env.Stdout, "  "+c)
			}
			return nil
		},
	}
	confirm.Flags().BoolVar(&confirmJSON, "json", false, `print {"recovery_codes": […]}`)

	disable := &cobra.Command{
		Use:   "disable CODE",
		Short: "turn 2FA off (a current code or a recovery code)",
		Args:  exactly(1, "a current CODE or a recovery code"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			if err := c.DisableTOTP(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintln(env.Stdout, "Two-factor authentication is off.")
			return nil
		},
	}

	var statusJSON bool
	status := &cobra.Command{
		Use:   "status",
		Short: "enrollment and lockout state",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			st, err := c.TOTPStatus(cmd.Context())
			if err != nil {
				return err
			}
			if statusJSON {
				// In the order this command always printed.
				return printJSON(env, struct {
					Enrolled          bool   `json:"enrolled"`
					Pending           bool   `json:"pending"`
					RecoveryCodesLeft int    `json:"recovery_codes_left"`
					Mode              string `json:"mode"`
					LockedUntil       string `json:"locked_until,omitempty"`
				}{st.Enrolled, st.Pending, st.RecoveryCodesLeft, st.Mode, st.LockedUntil})
			}
			state := "not enrolled"
			switch {
			case st.Enrolled:
				state = "active, " + cmdline.Plural(st.RecoveryCodesLeft, "recovery code") + " left"
			case st.Pending:
				state = "enrollment awaiting confirmation (vehicle-sim app totp confirm CODE)"
			}
			fmt.Fprintf(env.Stdout, "two-factor authentication: %s\ngateway policy: %s\n", state, st.Mode)
			if st.LockedUntil != "" {
				fmt.Fprintf(env.Stdout, "locked out until %s\n", st.LockedUntil)
			}
			return nil
		},
	}
	status.Flags().BoolVar(&statusJSON, "json", false, "print the gateway's answer as JSON")

	totp.AddCommand(enroll, confirm, disable, status)
	return totp
}
