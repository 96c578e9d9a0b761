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

	"telematics/pkg/cmdline"
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

const usage = `usage: vehicle-sim app [--gateway URL] [--session FILE] [--key FILE] COMMAND

commands:
  login --user U [--broker URL] [--totp CODE]   log in (password on stdin); keeps the session
  password                                     change the password (current and new on stdin,
                                               one per line); ends every other session
  send VIN ACTION [--totp CODE] [--json] [--broker URL] [--lifetime D]
                  [--local | --cloud-only] [--cloud-timeout D] [--link ADDR] [--user U]
                                               send a command signed with this phone's key:
                                               through the cloud, or over the car's local link
                                               when the cloud does not answer within
                                               --cloud-timeout (default 3s); --local uses the
                                               link only (no login needed: give --user).
                                               Prints the path ("path: cloud" or "path: local
                                               (why)") and each reply until the terminal one;
                                               exit 0 only for "executed"
  key create [--force]                         make this phone's key (the private half stays in
                                               the --key file, mode 0600); prints its key id
  key show [--json]                            this phone's key id and public key
  key pair VIN --totp CODE [--label L]         make this phone a key of car VIN (yours, or one
                                               its owner shared with you)
  key list [VIN] [--json]                      keys per car, the whitelist version and the
                                               version the car acknowledged (a revocation
                                               counts on the car only once it is acknowledged)
  key share VIN USER --role driver|valet [--until RFC3339] [--channels cloud,local] --totp CODE
                                               let USER pair a phone with your car
  key revoke VIN KEYID --totp CODE [--allow-last-owner] [--keep-share]
                                               take a key off the car's whitelist; a driver's
                                               or valet's last key ends their share unless
                                               --keep-share
  key remove-user VIN USER --totp CODE         remove a driver or valet from your car: all
                                               their keys revoked, their share ended
  totp enroll [--qr FILE] [--json] [--proof CODE]
                                               start 2FA enrollment: QR code, otpauth URL, secret
  totp confirm CODE                            activate it; prints ten single-use recovery codes
  totp disable CODE                            turn 2FA off (a current code or a recovery code)
  totp status                                  enrollment and lockout state

actions: lock unlock open_trunk honk flash climate_on climate_off charge_start charge_stop
         remote_start locate
environment: SIM_GATEWAY, SIM_APP_SESSION, SIM_PHONE_KEY (--key), SIM_LINK (--link)
`

// globals are the flags before the command.
type globals struct {
	gateway, session, key string
}

// Run executes `vehicle-sim app ARGS…` and returns the exit code.
func Run(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	fs := flag.NewFlagSet("vehicle-sim app", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var g globals
	fs.StringVar(&g.gateway, "gateway", orDefault(env.Getenv("SIM_GATEWAY"), "http://127.0.0.1:8080"), "gateway URL (login)")
	fs.StringVar(&g.session, "session", orDefault(env.Getenv("SIM_APP_SESSION"), defaultPath(env, "session.json")), "session file (0600)")
	fs.StringVar(&g.key, "key", orDefault(env.Getenv("SIM_PHONE_KEY"), defaultPath(env, "phone.key")), "phone key file (private key, 0600)")
	fs.Usage = func() { fmt.Fprint(env.Stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0 // asked for the usage, got it
		}
		return 2
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	switch rest[0] {
	case "login":
		return login(ctx, g.gateway, g.session, rest[1:], env)
	case "password":
		return password(ctx, g.session, rest[1:], env)
	case "send":
		return send(ctx, g, rest[1:], env)
	case "key":
		return keyCmd(ctx, g, rest[1:], env)
	case "totp":
		return totpCmd(ctx, g.session, rest[1:], env)
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

// defaultPath is ~/.vehicle-sim/name.
func defaultPath(env Env, name string) string {
	home := env.Getenv("HOME")
	if home == "" {
		home = "."
	}
	return filepath.Join(home, ".vehicle-sim", name)
}

func login(ctx context.Context, gateway, sessionPath string, args []string, env Env) int {
	fs := flag.NewFlagSet("vehicle-sim app login", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	user := fs.String("user", "", "user name")
	broker := fs.String("broker", "", "broker URL to use instead of the one the gateway advertises")
	totp := fs.String("totp", "", "TOTP code, where the gateway's policy asks for one at login")
	if _, err := cmdline.Interleaved(fs, args); err != nil {
		return 2
	}
	if *user == "" {
		fmt.Fprintln(env.Stderr, "vehicle-sim app login: --user is required (the password is read from stdin)")
		return 2
	}
	pw, err := cmdline.ReadPasswordLine(env.Stdin)
	if err != nil {
		fmt.Fprintf(env.Stderr, "vehicle-sim app login: %v\n", err)
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

// loadKey loads the phone key, explaining what to do when there is none.
func loadKey(path string) (*sign.Signer, error) {
	key, err := phone.LoadKey(path)
	if errors.Is(err, phone.ErrNoKey) {
		return nil, fmt.Errorf("this phone has no key (no file %s): create one with `vehicle-sim app key create`, "+
			"then make it a key of the car with `vehicle-sim app key pair VIN --totp CODE`", path)
	}
	return key, err
}

func send(ctx context.Context, g globals, args []string, env Env) int {
	fs := flag.NewFlagSet("vehicle-sim app send", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	totp := fs.String("totp", "", "TOTP code for actions that need one (cloud path)")
	asJSON := fs.Bool("json", false, "print one JSON object per reply, with the path it came by")
	broker := fs.String("broker", "", "broker URL (overrides the session's)")
	lifetime := fs.Duration("lifetime", protocol.DefaultCommandLifetimeMs*time.Millisecond, "how long the command stays valid (at most 30s)")
	local := fs.Bool("local", false, "use the car's local link only, not the cloud")
	cloudOnly := fs.Bool("cloud-only", false, "use the cloud only: no fallback to the local link")
	cloudTimeout := fs.Duration("cloud-timeout", phone.DefaultCloudTimeout, "how long to wait for the cloud's first answer before using the local link")
	link := fs.String("link", orDefault(env.Getenv("SIM_LINK"), phone.DefaultLinkAddr), "the car's local link address")
	userFlag := fs.String("user", "", "user name, for the local link without a login session")
	pos, err := cmdline.Interleaved(fs, args)
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
	switch {
	case *local && *cloudOnly:
		fmt.Fprintln(env.Stderr, "vehicle-sim app send: --local and --cloud-only exclude each other")
		return 2
	case *cloudTimeout <= 0:
		fmt.Fprintln(env.Stderr, "vehicle-sim app send: --cloud-timeout must be positive")
		return 2
	case *userFlag != "" && !protocol.ValidUser(*userFlag):
		fmt.Fprintf(env.Stderr, "vehicle-sim app send: %q is not a user name\n", *userFlag)
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(env.Stderr, "vehicle-sim app send: %v\n", err)
		return 1
	}

	// The cloud needs the login session; the local link only the user name and the key.
	sess, sessErr := LoadSession(g.session)
	user := *userFlag
	switch {
	case sessErr == nil && user != "" && user != sess.User:
		fmt.Fprintf(env.Stderr, "vehicle-sim app send: --user %s, but the session is %s's\n", user, sess.User)
		return 2
	case sessErr == nil:
		user = sess.User
	case *cloudOnly || user == "":
		if !*cloudOnly {
			sessErr = fmt.Errorf("%w\n(to use the car's local link without logging in: --local --user NAME)", sessErr)
		}
		return fail(sessErr)
	default:
		sess = nil // no session, --user given: the local link is all there is
	}
	key, err := loadKey(g.key)
	if err != nil {
		return fail(err)
	}

	req := phone.Request{VIN: vin, Action: action, TOTP: *totp, Lifetime: *lifetime}
	enc := json.NewEncoder(env.Stdout)
	var printed phone.Path
	show := func(o phone.Outcome) {
		if *asJSON {
			_ = enc.Encode(struct {
				protocol.Reply
				Path     phone.Path `json:"path"`
				Fallback string     `json:"fallback,omitempty"`
			}{o.Reply, o.Path, o.Fallback})
			return
		}
		if o.Path != printed {
			printed = o.Path
			if o.Fallback != "" {
				fmt.Fprintf(env.Stdout, "path: %s (%s)\n", o.Path, o.Fallback)
			} else {
				fmt.Fprintf(env.Stdout, "path: %s\n", o.Path)
			}
		}
		fmt.Fprintln(env.Stdout, replyLine(o.Reply))
	}

	var out phone.Outcome
	if *local {
		var res protocol.Result
		res, err = phone.LocalSend(ctx, *link, key, user, req)
		if err == nil {
			out = phone.Outcome{Path: phone.PathLocal, Reply: phone.ResultReply(req, res)}
			show(out)
		}
	} else {
		opts := phone.AutoOptions{Session: sess, BrokerURL: *broker, Key: key, User: user,
			LinkAddr: *link, CloudTimeout: *cloudTimeout, CloudOnly: *cloudOnly}
		stale := ""
		if sess != nil {
			opts.CurrentBroker = func(ctx context.Context) (string, error) { return phone.CurrentBroker(ctx, sess) }
			opts.BrokerChecked = func(current string, err error) {
				stale = brokerChecked(sess, g.session, current, err, env)
			}
		}
		out, err = phone.SendAuto(ctx, opts, req, show)
		if stale != "" && (err != nil || out.Path == phone.PathLocal) {
			fmt.Fprintln(env.Stderr, stale)
		}
	}
	if err != nil {
		if h := sendHint(err, vin, *link); h != "" {
			err = fmt.Errorf("%w\n%s", err, h)
		}
		return fail(err)
	}
	if h := outcomeHint(out, key.KID()); h != "" {
		fmt.Fprintln(env.Stderr, h)
	}
	if out.Reply.Status != protocol.ReplyExecuted {
		return 1
	}
	return 0
}

// brokerChecked handles the gateway's answer about its current broker, asked when the
// session's broker could not be used: a new broker is kept in the session (and said on
// stderr); an answer that could not be had returns what to tell the user if the cloud fails.
func brokerChecked(sess *phone.Session, sessionPath, current string, err error, env Env) (stale string) {
	old := sess.BrokerURL
	var ae *phone.APIError
	switch {
	case err != nil && !errors.As(err, &ae) && !errors.Is(err, phone.ErrNoSessionEndpoint):
		return "" // the gateway is not answering either: an outage, not a moved broker
	case err != nil:
		return fmt.Sprintf("the session's broker %s did not answer and the gateway could not say which broker it uses now (%v); "+
			"if the broker moved, log in again (vehicle-sim app login --user NAME) or give --broker URL", old, err)
	case current == old:
		return ""
	}
	sess.BrokerURL = current
	if err := SaveSession(sessionPath, sess); err != nil {
		fmt.Fprintf(env.Stderr, "the gateway now names the broker %s (the session had %s), but the session file could not be updated: %v\n", current, old, err)
		return ""
	}
	fmt.Fprintf(env.Stderr, "the session's broker %s did not answer; the gateway now names %s: using it, and kept in %s\n", old, current, sessionPath)
	return ""
}

// replyLine is one reply in text: "ID ACTION STATUS[: REASON] [(locked=…)]".
func replyLine(r protocol.Reply) string {
	line := fmt.Sprintf("%s %s %s", r.ID, r.Action, r.Status)
	if r.Reason != "" {
		line += ": " + string(r.Reason)
	}
	if r.Status == protocol.ReplyExecuted && len(r.State) > 0 {
		if v, ok := r.State[protocol.VSSIsLocked]; ok {
			line += fmt.Sprintf(" (locked=%v)", v)
		}
	}
	return line
}

// sendHint says what to do about an error that kept a command from any answer.
func sendHint(err error, vin, link string) string {
	var ae *phone.APIError
	if errors.As(err, &ae) && ae.Reason == protocol.ReasonVehicleUnknown {
		return fmt.Sprintf("no car %s answers on the local link %s: are you next to it (--link ADDR)?", vin, link)
	}
	if errors.Is(err, phone.ErrCarUnreachable) {
		return fmt.Sprintf("nothing answers on the local link %s: are you next to the car (--link ADDR, SIM_LINK)?", link)
	}
	if errors.Is(err, phone.ErrNoTerminalReply) {
		return "the cloud took the command but gave no final answer; it was not retried over the local link " +
			"(it may have run): check the car, and if you are next to it, send again with --local"
	}
	return ""
}

// outcomeHint explains a final answer that was not "executed", where there is something to do.
func outcomeHint(o phone.Outcome, kid string) string {
	r := o.Reply
	switch {
	case r.Status == protocol.ReplyExpired:
		return "the cloud accepted the command but the car's result did not come before it expired; it was " +
			"not retried over the local link (it may have run late): check the car, and if you are next to it, " +
			"send again with --local"
	case r.Reason == protocol.ReasonVehicleOffline:
		return "the cloud cannot reach the car; if you are next to it, send again with --local"
	case r.Reason == protocol.ReasonKeyUnknown:
		return fmt.Sprintf("this phone's key %s is not on the car's whitelist: pair it (vehicle-sim app key pair %s --totp CODE); "+
			"over the local link the car must also have received the new whitelist", kid, r.VIN)
	case r.Reason == protocol.ReasonDuplicate && o.Path == phone.PathLocal && o.Fallback != "":
		return "the car had already executed this command: the cloud's copy reached it after all"
	case r.Status == protocol.ReplyRejected:
		return reasonHint(r.Reason)
	}
	return ""
}

// reasonHint says what to do about a refusal, for the reasons a user can act on.
func reasonHint(r protocol.Reason) string {
	switch r {
	case protocol.ReasonTOTPRequired:
		return "this needs a code from your authenticator app: add --totp CODE"
	case protocol.ReasonTOTPInvalid:
		return "the code is wrong: check the authenticator app and the phone's clock"
	case protocol.ReasonTOTPReplayed:
		return "that code was used already: wait for the next one"
	case protocol.ReasonTOTPEnrollmentRequired:
		return "two-factor authentication must be set up first: vehicle-sim app totp enroll"
	case protocol.ReasonLockedOut:
		return "too many failed attempts: wait a while before trying again"
	case protocol.ReasonUnauthenticated:
		return "the login session is no longer valid: vehicle-sim app login --user NAME"
	case protocol.ReasonKeyRevoked:
		return "this phone's key was revoked for this car"
	case protocol.ReasonKeyExpired:
		return "this phone's key is not valid now (outside its validity period)"
	}
	return ""
}
