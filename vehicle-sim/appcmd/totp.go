package appcmd

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"

	"github.com/mdp/qrterminal/v3"
	"github.com/spf13/cobra"

	"telematics/pkg/cmdline"
	"telematics/pkg/phone"
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
	// call makes an authorized call to the gateway's 2FA API with the session's token.
	call := func(cmd *cobra.Command, method, path string, in, out any) error {
		sess, err := LoadSession(g.session)
		if err != nil {
			return err
		}
		return phone.Call(cmd.Context(), method, sess.Gateway+path, sess.Token, in, out)
	}

	var qrFile, proof string
	var enrollJSON bool
	enroll := &cobra.Command{
		Use:   "enroll",
		Short: "start 2FA enrollment: QR code, otpauth URL, secret",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var e struct {
				URL    string `json:"otpauth_url"`
				Secret string `json:"secret"`
				QRPNG  string `json:"qr_png"`
			}
			if err := call(cmd, http.MethodPost, "/v1/2fa/enroll", map[string]string{"proof": proof}, &e); err != nil {
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
				return json.NewEncoder(env.Stdout).Encode(map[string]string{"otpauth_url": e.URL, "secret": e.Secret})
			}
			fmt.Fprintln(env.Stdout, "Scan this with your authenticator app:")
			qrterminal.GenerateHalfBlock(e.URL, qrterminal.L, env.Stdout)
			fmt.Fprintf(env.Stdout, "\n%s\n\nOr type the secret by hand: %s\n", e.URL, e.Secret)
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
			var out struct {
				Codes []string `json:"recovery_codes"`
			}
			if err := call(cmd, http.MethodPost, "/v1/2fa/confirm", map[string]string{"code": args[0]}, &out); err != nil {
				return err
			}
			if confirmJSON {
				return printJSON(env, out)
			}
			fmt.Fprintln(env.Stdout, "Two-factor authentication is active. Recovery codes (each works once; shown only now):")
			for _, c := range out.Codes {
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
			if err := call(cmd, http.MethodPost, "/v1/2fa/disable", map[string]string{"code": args[0]}, nil); err != nil {
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
			var st struct {
				Enrolled          bool   `json:"enrolled"`
				Pending           bool   `json:"pending"`
				RecoveryCodesLeft int    `json:"recovery_codes_left"`
				Mode              string `json:"mode"`
				LockedUntil       string `json:"locked_until,omitempty"`
			}
			if err := call(cmd, http.MethodGet, "/v1/2fa", nil, &st); err != nil {
				return err
			}
			if statusJSON {
				return printJSON(env, st)
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
