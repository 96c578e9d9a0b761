package appcmd

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"

	"github.com/mdp/qrterminal/v3"

	"telematics/pkg/cmdline"
	"telematics/pkg/phone"
)

// totpCmd is `vehicle-sim app totp enroll|confirm|disable|status`.
func totpCmd(ctx context.Context, sessionPath string, args []string, env Env) int {
	if len(args) == 0 {
		fmt.Fprintf(env.Stderr, "vehicle-sim app totp: need enroll, confirm CODE, disable CODE or status\n")
		return 2
	}
	sess, err := LoadSession(sessionPath)
	if err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app totp: %v\n", err)
		return 1
	}
	call := func(method, path string, in, out any) error {
		return phone.Call(ctx, method, sess.Gateway+path, sess.Token, in, out)
	}
	fail := func(err error) int {
		fmt.Fprintf(env.Stderr, "vehicle-sim app totp %s: %v\n", args[0], err)
		return 1
	}
	switch args[0] {
	case "enroll":
		fs := flag.NewFlagSet("vehicle-sim app totp enroll", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		qrFile := fs.String("qr", "", "also write the QR code as a PNG file")
		asJSON := fs.Bool("json", false, `print {"otpauth_url", "secret"} only`)
		proof := fs.String("proof", "", "a current code or a recovery code, to replace an active enrollment")
		if _, err := cmdline.Interleaved(fs, args[1:]); err != nil {
			return 2
		}
		var e struct {
			URL    string `json:"otpauth_url"`
			Secret string `json:"secret"`
			QRPNG  string `json:"qr_png"`
		}
		if err := call(http.MethodPost, "/v1/2fa/enroll", map[string]string{"proof": *proof}, &e); err != nil {
			return fail(err)
		}
		if *qrFile != "" {
			png, err := base64.StdEncoding.DecodeString(e.QRPNG)
			if err != nil {
				return fail(fmt.Errorf("gateway sent a damaged QR code: %w", err))
			}
			if err := os.WriteFile(*qrFile, png, 0o600); err != nil {
				return fail(err)
			}
		}
		if *asJSON {
			_ = json.NewEncoder(env.Stdout).Encode(map[string]string{"otpauth_url": e.URL, "secret": e.Secret})
			return 0
		}
		fmt.Fprintln(env.Stdout, "Scan this with your authenticator app:")
		qrterminal.GenerateHalfBlock(e.URL, qrterminal.L, env.Stdout)
		fmt.Fprintf(env.Stdout, "\n%s\n\nOr type the secret by hand: %s\n", e.URL, e.Secret)
		if *qrFile != "" {
			fmt.Fprintf(env.Stdout, "QR code written to %s\n", *qrFile)
		}
		fmt.Fprintln(env.Stdout, "Then activate it: vehicle-sim app totp confirm CODE")
		return 0
	case "confirm":
		if len(args) != 2 {
			fmt.Fprintln(env.Stderr, "vehicle-sim app totp confirm: need the CODE your authenticator shows")
			return 2
		}
		var out struct {
			Codes []string `json:"recovery_codes"`
		}
		if err := call(http.MethodPost, "/v1/2fa/confirm", map[string]string{"code": args[1]}, &out); err != nil {
			return fail(err)
		}
		fmt.Fprintln(env.Stdout, "Two-factor authentication is active. Recovery codes (each works once; shown only now):")
		for _, c := range out.Codes {
			fmt.Fprintln(env.Stdout, "  "+c)
		}
		return 0
	case "disable":
		if len(args) != 2 {
			fmt.Fprintln(env.Stderr, "vehicle-sim app totp disable: need a current CODE or a recovery code")
			return 2
		}
		if err := call(http.MethodPost, "/v1/2fa/disable", map[string]string{"code": args[1]}, nil); err != nil {
			return fail(err)
		}
		fmt.Fprintln(env.Stdout, "Two-factor authentication is off.")
		return 0
	case "status":
		var st map[string]any
		if err := call(http.MethodGet, "/v1/2fa", nil, &st); err != nil {
			return fail(err)
		}
		return printJSON(env, st)
	}
	fmt.Fprintf(env.Stderr, "vehicle-sim app totp: unknown command %q\n", args[0])
	return 2
}

func printJSON(env Env, v any) int {
	enc := json.NewEncoder(env.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return 1
	}
	return 0
}
