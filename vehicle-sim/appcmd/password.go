package appcmd

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"telematics/gateway/httpapi"
	"telematics/pkg/phone"
)

// password changes the logged-in user's password: the current and the new one are read from
// stdin, one per line. The gateway ends every other token and session of the user and
// returns a new token, which replaces the one in the session file.
func password(ctx context.Context, sessionPath string, args []string, env Env) int {
	if len(args) != 0 {
		fmt.Fprintln(env.Stderr, "vehicle-sim app password: no arguments (current and new password on stdin, one per line)")
		return 2
	}
	sess, err := LoadSession(sessionPath)
	if err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app password: %v\n", err)
		return 1
	}
	b, err := io.ReadAll(io.LimitReader(env.Stdin, 8192))
	if err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app password: read stdin: %v\n", err)
		return 2
	}
	lines := strings.Split(strings.ReplaceAll(string(b), "\r", ""), "\n")
	if len(lines) < 2 || lines[0] == "" || lines[1] == "" {
		fmt.Fprintln(env.Stderr, "vehicle-sim app password: give the current and the new password on stdin, one per line")
		return 2
	}
	var out struct {
		Token       string `json:"token"`
		ExpiresAtMs int64  `json:"expires_at"`
	}
	if err := phone.Call(ctx, http.MethodPost, sess.Gateway+"/v1/password", sess.Token,
		httpapi.PasswordRequest{OldPassword: lines[0], Password: lines[1]}, &out); err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app password: %v\n", err)
		return 1
	}
	sess.Token, sess.ExpiresAtMs = out.Token, out.ExpiresAtMs
	if err := SaveSession(sessionPath, sess); err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app password: %v\n", err)
		return 1
	}
	fmt.Fprintf(env.Stdout, "password of %s changed; every other session was logged out; this one is valid until %s\n",
		sess.User, time.UnixMilli(sess.ExpiresAtMs).Format(time.RFC3339))
	return 0
}
