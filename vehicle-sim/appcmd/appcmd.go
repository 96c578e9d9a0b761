// Package appcmd is `vehicle-sim app …`: the simulated phone app on the command line. It logs
// in to the gateway, keeps the session in a 0600 file, and sends commands to cars, printing
// each reply until the terminal one.
package appcmd

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// Env is what a command reads and writes.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

const usage = `usage: vehicle-sim app [--gateway URL] [--session FILE] COMMAND

commands:
  login --user U [--broker URL] [--totp CODE]   log in (password on stdin); keeps the session
  send VIN ACTION [--totp CODE] [--json] [--broker URL]
                                               send a command; prints each reply until the
                                               terminal one; exit 0 only for "executed"
  totp enroll [--qr FILE] [--json] [--proof CODE]
                                               start 2FA enrollment: QR code, otpauth URL, secret
  totp confirm CODE                            activate it; prints ten single-use recovery codes
  totp disable CODE                            turn 2FA off (a current code or a recovery code)
  totp status                                  enrollment and lockout state

actions: lock unlock open_trunk honk flash climate_on climate_off charge_start charge_stop
         remote_start locate
`

// Run executes `vehicle-sim app ARGS…` and returns the exit code.
func Run(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	fs := flag.NewFlagSet("vehicle-sim app", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	gateway := fs.String("gateway", orDefault(env.Getenv("SIM_GATEWAY"), "http://127.0.0.1:8080"), "gateway URL (login)")
	sessionPath := fs.String("session", orDefault(env.Getenv("SIM_APP_SESSION"), defaultSessionPath(env)), "session file (0600)")
	fs.Usage = func() { fmt.Fprint(env.Stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	switch rest[0] {
	case "login":
		return login(ctx, *gateway, *sessionPath, rest[1:], env)
	case "send":
		return send(ctx, *sessionPath, rest[1:], env)
	case "totp":
		return totpCmd(ctx, *sessionPath, rest[1:], env)
	}
	fmt.Fprintf(env.Stderr, "vehicle-sim app: unknown command %q\n\n%s", rest[0], usage)
	return 2
}

func orDefault(v, def string) string {
	if v != "" {
		return v
	}
	return def
}

func defaultSessionPath(env Env) string {
	home := env.Getenv("HOME")
	if home == "" {
		home = "."
	}
	return filepath.Join(home, ".vehicle-sim", "session.json")
}

// interleaved lets flags follow positional arguments ("send VIN unlock --json").
func interleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func login(ctx context.Context, gateway, sessionPath string, args []string, env Env) int {
	fs := flag.NewFlagSet("vehicle-sim app login", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	user := fs.String("user", "", "user name")
	broker := fs.String("broker", "", "broker URL to use instead of the one the gateway advertises")
	totp := fs.String("totp", "", "TOTP code, where the gateway's policy asks for one at login")
	if _, err := interleaved(fs, args); err != nil {
		return 2
	}
	if *user == "" {
		fmt.Fprintln(env.Stderr, "vehicle-sim app login: --user is required (the password is read from stdin)")
		return 2
	}
	b, err := io.ReadAll(io.LimitReader(env.Stdin, 4096))
	if err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app login: read password: %v\n", err)
		return 1
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimRight(pw, "\r")
	if pw == "" {
		fmt.Fprintln(env.Stderr, "vehicle-sim app login: no password on stdin")
		return 2
	}
	sess, err := phone.Login(ctx, gateway, *user, pw, *totp)
	if err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app login: %v\n", err)
		return 1
	}
	if *broker != "" {
		sess.BrokerURL = *broker
	}
	if err := SaveSession(sessionPath, sess); err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app login: %v\n", err)
		return 1
	}
	fmt.Fprintf(env.Stdout, "logged in as %s until %s; broker %s; session in %s\n", sess.User,
		time.UnixMilli(sess.ExpiresAtMs).Format(time.RFC3339), sess.BrokerURL, sessionPath)
	return 0
}

// SaveSession writes the session 0600: it holds an access token.
func SaveSession(path string, s *phone.Session) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return sign.WriteFileAtomic(path, b, 0o600)
}

// LoadSession reads a session written by login.
func LoadSession(path string) (*phone.Session, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no session in %s: run `vehicle-sim app login --user NAME` first", path)
	}
	if err != nil {
		return nil, err
	}
	var s phone.Session
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("session file %s is damaged (%v): log in again", path, err)
	}
	return &s, nil
}

func send(ctx context.Context, sessionPath string, args []string, env Env) int {
	fs := flag.NewFlagSet("vehicle-sim app send", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	totp := fs.String("totp", "", "TOTP code for actions that need one")
	asJSON := fs.Bool("json", false, "print one JSON object per reply")
	broker := fs.String("broker", "", "broker URL (overrides the session's)")
	lifetime := fs.Duration("lifetime", protocol.DefaultCommandLifetimeMs*time.Millisecond, "how long the command stays valid (at most 30s)")
	pos, err := interleaved(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 2 {
		fmt.Fprintf(env.Stderr, "vehicle-sim app send: need VIN and ACTION\n\n%s", usage)
		return 2
	}
	vin, action := strings.ToUpper(pos[0]), protocol.Action(pos[1])
	if !protocol.ValidVIN(vin) {
		fmt.Fprintf(env.Stderr, "vehicle-sim app send: %q is not a VIN (17 characters, digits and capitals without I, O, Q)\n", pos[0])
		return 2
	}
	if !action.Valid() {
		fmt.Fprintf(env.Stderr, "vehicle-sim app send: unknown action %q\n\n%s", pos[1], usage)
		return 2
	}
	sess, err := LoadSession(sessionPath)
	if err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app send: %v\n", err)
		return 1
	}
	if time.Now().UnixMilli() >= sess.ExpiresAtMs {
		fmt.Fprintln(env.Stderr, "vehicle-sim app send: the session has expired: log in again")
		return 1
	}
	app, err := phone.Connect(ctx, sess, *broker, nil)
	if err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app send: connect to the broker: %v\n", err)
		return 1
	}
	defer app.Close()
	enc := json.NewEncoder(env.Stdout)
	final, err := app.Send(ctx, phone.Request{VIN: vin, Action: action, TOTP: *totp, Lifetime: *lifetime}, func(r protocol.Reply) {
		if *asJSON {
			_ = enc.Encode(r)
			return
		}
		line := fmt.Sprintf("%s %s %s", r.ID, r.Action, r.Status)
		if r.Reason != "" {
			line += ": " + string(r.Reason)
		}
		if r.Status == protocol.ReplyExecuted && len(r.State) > 0 {
			if v, ok := r.State[protocol.VSSIsLocked]; ok {
				line += fmt.Sprintf(" (locked=%v)", v)
			}
		}
		fmt.Fprintln(env.Stdout, line)
	})
	if err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app send: %v\n", err)
		return 1
	}
	if final.Status != protocol.ReplyExecuted {
		return 1
	}
	return 0
}
