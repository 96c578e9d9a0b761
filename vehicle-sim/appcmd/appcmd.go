// Package appcmd is `vehicle-sim app …`: the simulated phone app on the command line. It logs
// in to the gateway, keeps the session in a 0600 file, and sends commands to cars, printing
// each reply until the terminal one.
package appcmd

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"telematics/pkg/api"
	"telematics/pkg/cmdline"
	"telematics/pkg/mqttc"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
	"telematics/vehicle-sim/config"
)

// Env is what a command reads and writes.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Getenv reads HOME (for the default session and key files); nil: os.Getenv.
	Getenv func(string) string
	// Environ is the environment the SIM_* variables of the flags come from ("KEY=value").
	// Nil: os.Environ() when Getenv is nil too, else no variables.
	Environ []string
}

func (e Env) getenv(k string) string {
	if e.Getenv != nil {
		return e.Getenv(k)
	}
	for _, kv := range e.Environ {
		if name, v, ok := strings.Cut(kv, "="); ok && name == k {
			return v
		}
	}
	if e.Environ == nil {
		return os.Getenv(k)
	}
	return ""
}

func (e Env) environ() []string {
	if e.Environ == nil && e.Getenv == nil {
		return os.Environ()
	}
	return e.Environ
}

// overview is the app command's description: every subcommand in one screen.
const overview = `The simulated phone app: log in to the gateway, set up 2FA, make this phone's key and pair it
with cars, and send signed commands through the cloud or over the car's local link.

commands:
  login --user U [--broker URL] [--totp CODE]   log in (the password is prompted for, or read
                                               from stdin); keeps the session
  password                                     change the password (prompted for, or current
                                               and new on stdin, one per line); ends every
                                               other session
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

Flags go anywhere after "app" (vehicle-sim app send VIN unlock --totp 123456). VINs may be
typed in lower case.

actions: lock unlock open_trunk honk flash climate_on climate_off charge_start charge_stop
         remote_start locate
environment: every flag has a variable, shown in its help: SIM_GATEWAY, SIM_APP_SESSION,
             SIM_PHONE_KEY (--key), SIM_LINK (--link), SIM_APP_… for the others`

// globals are the app's persistent flags.
type globals struct {
	gateway, session, key, ca string
}

// NewCommand returns `vehicle-sim app` and its subcommands.
func NewCommand(env Env) *cobra.Command {
	var g globals
	app := &cobra.Command{
		Use:   "app COMMAND",
		Short: "act as a phone: login, 2FA, keys, commands, local link",
		Long:  overview,
		RunE: func(c *cobra.Command, _ []string) error {
			// No command: the overview on stderr, a usage error.
			fmt.Fprintf(env.Stderr, "usage: vehicle-sim app COMMAND [flags]\n\n%s\n\n%s", overview, c.UsageString())
			return cmdline.WithExitCode(2, nil)
		},
	}
	pf := app.PersistentFlags()
	pf.StringVar(&g.gateway, "gateway", config.Default().Gateway, "gateway `URL` (login)")
	pf.StringVar(&g.session, "session", defaultPath(env, "session.json"), "session `FILE` (0600)")
	pf.StringVar(&g.key, "key", defaultPath(env, "phone.key"), "phone key `FILE` (private key, 0600)")
	pf.StringVar(&g.ca, "ca", "", "PEM CA certificate `FILE` that verifies the gateway (https://) and the broker (ssl://, wss://); kept in the session at login")
	app.AddCommand(loginCommand(&g, env), passwordCommand(&g, env), sendCommand(&g, env), keyCommand(&g, env), totpCommand(&g, env))

	// Every flag of the app has a variable SIM_APP_FLAG, but for the names documented before.
	cmdline.PrefixEnv(app, "SIM_APP_", "totp", "proof")
	cmdline.SetEnv(app, "gateway", "SIM_GATEWAY")
	cmdline.SetEnv(app, "session", "SIM_APP_SESSION")
	cmdline.SetEnv(app, "key", "SIM_PHONE_KEY")
	cmdline.SetEnv(app, "ca", "SIM_CA")
	if send, _, err := app.Find([]string{"send"}); err == nil {
		cmdline.SetEnv(send, "link", "SIM_LINK")
	}
	return app
}

// Run executes `vehicle-sim app ARGS…` and returns the exit code (0 ok, 1 failure, 2 usage).
func Run(ctx context.Context, args []string, env Env) int {
	root := cmdline.NewRoot("vehicle-sim", "simulated cars and phones", config.EnvPrefix)
	root.AddCommand(NewCommand(env))
	return cmdline.ExecuteWithEnv(ctx, root, append([]string{"app"}, args...), env.environ(), env.Stdin, env.Stdout, env.Stderr)
}

// defaultPath is ~/.vehicle-sim/name.
func defaultPath(env Env, name string) string {
	home := env.getenv("HOME")
	if home == "" {
		home = "."
	}
	return filepath.Join(home, ".vehicle-sim", name)
}

// vinArg reads a VIN argument: lower case is normalised; anything else malformed is a usage
// error.
func vinArg(s string) (string, error) {
	v := strings.ToUpper(strings.TrimSpace(s))
	if !protocol.ValidVIN(v) {
		return "", cmdline.UsageError("%q is not a VIN (17 characters, digits and capitals without I, O, Q)", s)
	}
	return v, nil
}

// printJSON writes v as indented JSON.
func printJSON(env Env, v any) error {
	enc := json.NewEncoder(env.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func loginCommand(g *globals, env Env) *cobra.Command {
	var user, broker, totp string
	var asJSON bool
	c := &cobra.Command{
		Use:   "login --user NAME",
		Short: "log in to the gateway; the password is prompted for (no echo), or read from stdin",
		Long: `Logs in to the gateway and keeps the session (token, broker address) in --session, mode 0600.
At a terminal the password is prompted for without echo; otherwise it is the first line of stdin
(echo 'a long passphrase' | vehicle-sim app login --user alice).`,
		Example: `  vehicle-sim app login --user alice --gateway http://127.0.0.1:8080
  echo 'a long passphrase' | vehicle-sim app login --user alice`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if user == "" {
				return cmdline.UsageError("--user is required (the password is prompted for, or read from stdin)")
			}
			pw, err := cmdline.ReadPassword(env.Stdin, env.Stderr, fmt.Sprintf("password for %s: ", user), false)
			if errors.Is(err, cmdline.ErrNoPassword) {
				return cmdline.UsageError("%v", err)
			}
			if err != nil {
				return err
			}
			ca, err := caFile(g.ca, g.gateway)
			if err != nil {
				return err
			}
			sess, err := phone.LoginCA(cmd.Context(), g.gateway, ca, user, pw, totp)
			if err != nil {
				return withCAHint(err)
			}
			if broker != "" {
				sess.BrokerURL = broker
			}
			if err := SaveSession(g.session, sess); err != nil {
				return err
			}
			if asJSON {
				return printJSON(env, map[string]any{"user": sess.User, "expires_at": sess.ExpiresAtMs,
					"broker_url": sess.BrokerURL, "gateway": sess.Gateway, "session": g.session})
			}
			fmt.Fprintf(env.Stdout, "logged in as %s until %s; broker %s; session in %s\n", sess.User,
				cmdline.Time(sess.ExpiresAtMs), sess.BrokerURL, g.session)
			return nil
		},
	}
	c.Flags().StringVar(&user, "user", "", "user `NAME`")
	c.Flags().StringVar(&broker, "broker", "", "broker `URL` to use instead of the one the gateway advertises")
	c.Flags().StringVar(&totp, "totp", "", "TOTP `CODE`, where the gateway's policy asks for one at login")
	c.Flags().BoolVar(&asJSON, "json", false, `print {"user", "expires_at", "broker_url", "gateway", "session"} (never the token)`)
	return c
}

// caFile checks --ca against the gateway URL and makes it absolute (the session keeps it for
// later commands run from elsewhere). A CA with an http:// gateway is refused: the user asked
// for verification, and plain text would silently skip it.
func caFile(ca, gateway string) (string, error) {
	if ca == "" {
		return "", nil
	}
	if u, err := url.Parse(gateway); err == nil && !tlsconf.SecureScheme(u.Scheme) {
		return "", cmdline.UsageError("--ca %s is given but --gateway %s is plain text: use https://", ca, gateway)
	}
	if _, err := tlsconf.LoadPool(ca); err != nil {
		return "", err
	}
	return filepath.Abs(ca)
}

// withCAHint adds what to do to a certificate that did not verify.
func withCAHint(err error) error {
	var verify *tls.CertificateVerificationError
	if errors.As(err, &verify) || errors.Is(err, mqttc.ErrTLS) {
		return fmt.Errorf("%w\n(the server's certificate did not verify: pass its CA certificate with --ca FILE, e.g. the gateway's DATA/ca.pem)", err)
	}
	return err
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

func sendCommand(g *globals, env Env) *cobra.Command {
	var (
		totp, broker, link, userFlag string
		gatewayKey                   string
		asJSON, local, cloudOnly     bool
		lifetime, cloudTimeout       time.Duration
	)
	c := &cobra.Command{
		Use:   "send VIN ACTION",
		Short: "send a command signed with this phone's key: through the cloud, else over the car's local link",
		Long: `Sends ACTION to car VIN, signed with this phone's key: through the cloud (the broker the
session names), or over the car's local link when the cloud does not answer within
--cloud-timeout; --local uses the link only (no login needed: give --user and --gateway-key). Prints the path
("path: cloud" or "path: local (why)") and each reply until the terminal one; exit 0 only for
"executed". When the session's broker does not answer, send asks the gateway which broker it
uses now and follows it (the session keeps the new address).

actions: lock unlock open_trunk honk flash climate_on climate_off charge_start charge_stop
         remote_start locate`,
		Example: `  vehicle-sim app send 1HGCM82633A004352 unlock --totp 345678
  vehicle-sim app send 1HGCM82633A004352 lock --json
  vehicle-sim app send 1hgcm82633a004352 unlock --local --user alice --link 127.0.0.1:1884`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return cmdline.UsageError("need VIN and ACTION (got %d arguments)", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			vin, err := vinArg(args[0])
			if err != nil {
				return err
			}
			action := protocol.Action(args[1])
			if !action.Valid() {
				return cmdline.UsageError("unknown action %q (see vehicle-sim app send --help)", args[1])
			}
			switch {
			case local && cloudOnly:
				return cmdline.UsageError("--local and --cloud-only exclude each other")
			case cloudTimeout <= 0:
				return cmdline.UsageError("--cloud-timeout must be positive")
			case userFlag != "" && !protocol.ValidUser(userFlag):
				return cmdline.UsageError("%q is not a user name", userFlag)
			}
			// off, the one spelling of "none", is the cloud only; an empty value is refused.
			if _, off, err := cmdline.Addr("--link", link); err != nil {
				return cmdline.UsageError("%v", err)
			} else if off && local {
				return cmdline.UsageError("--local needs the car's local link, not --link off")
			} else if off {
				cloudOnly = true
			}

			// The cloud needs the login session; the local link only the user name and the key.
			sess, sessErr := LoadSession(g.session)
			user := userFlag
			switch {
			case sessErr == nil && user != "" && user != sess.User:
				return cmdline.UsageError("--user %s, but the session is %s's", user, sess.User)
			case sessErr == nil:
				user = sess.User
			case cloudOnly || user == "":
				if !cloudOnly {
					sessErr = fmt.Errorf("%w\n(to use the car's local link without logging in: --local --user NAME)", sessErr)
				}
				return sessErr
			default:
				sess = nil // no session, --user given: the local link is all there is
			}
			key, err := loadKey(g.key)
			if err != nil {
				return err
			}

			// The gateway keys whose certification of the car the phone accepts on the local link:
			// the session's, and --gateway-key for a phone without one.
			gatewayKeys := sess.LinkTrust()
			if gatewayKey != "" {
				gatewayKeys = append(gatewayKeys, gatewayKey)
			}
			req := phone.Request{VIN: vin, Action: action, TOTP: totp, Lifetime: lifetime}
			enc := json.NewEncoder(env.Stdout)
			var printed phone.Path
			show := func(o phone.Outcome) {
				if asJSON {
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
			if local {
				var res protocol.Result
				res, err = phone.LocalSend(ctx, link, gatewayKeys, key, user, req)
				if err == nil {
					out = phone.Outcome{Path: phone.PathLocal, Reply: phone.ResultReply(req, res)}
					show(out)
				}
			} else {
				opts := phone.AutoOptions{Session: sess, BrokerURL: broker, Key: key, User: user,
					LinkAddr: link, GatewayKeys: gatewayKeys, CloudTimeout: cloudTimeout, CloudOnly: cloudOnly}
				stale := ""
				if sess != nil {
					opts.CurrentBroker = func(ctx context.Context) (string, error) { return sess.Client().CurrentBroker(ctx) }
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
				if h := sendHint(err, vin, link); h != "" {
					err = fmt.Errorf("%w\n%s", err, h)
				}
				return err
			}
			if h := outcomeHint(out, key.KID()); h != "" {
				fmt.Fprintln(env.Stderr, h)
			}
			if out.Reply.Status != protocol.ReplyExecuted {
				return cmdline.WithExitCode(1, nil) // the reply, printed, says why
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&totp, "totp", "", "TOTP `CODE` for actions that need one (cloud path)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per reply, with the path it came by")
	f.StringVar(&broker, "broker", "", "broker `URL` (overrides the session's)")
	f.DurationVar(&lifetime, "lifetime", protocol.DefaultCommandLifetimeMs*time.Millisecond, "how long the command stays valid (at most 30s)")
	f.BoolVar(&local, "local", false, "use the car's local link only, not the cloud")
	f.BoolVar(&cloudOnly, "cloud-only", false, "use the cloud only: no fallback to the local link")
	f.DurationVar(&cloudTimeout, "cloud-timeout", phone.DefaultCloudTimeout, "how long to wait for the cloud's first answer before using the local link")
	f.StringVar(&link, "link", phone.DefaultLinkAddr, "the car's local link: `ADDR` (host:port), or off for the cloud only")
	f.StringVar(&userFlag, "user", "", "user `NAME`, for the local link without a login session")
	f.StringVar(&gatewayKey, "gateway-key", "", "the gateway's public `KEY` (base64url DER, GET /v1/gateway-key), for the local link without a login session: "+
		"the phone accepts only a car this key certified")
	return c
}

// brokerChecked handles the gateway's answer about its current broker, asked when the
// session's broker could not be used: a new broker is kept in the session (and said on
// stderr); an answer that could not be had returns what to tell the user if the cloud fails.
func brokerChecked(sess *phone.Session, sessionPath, current string, err error, env Env) (stale string) {
	old := sess.BrokerURL
	var ae *api.Error
	switch {
	case err != nil && !errors.As(err, &ae) && !errors.Is(err, api.ErrNoSessionEndpoint):
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

// replyLine is one reply in text: "ID ACTION STATUS[: REASON[: MESSAGE]] [(locked=…)]", the
// message being the car's for a refusal for its state ("the trunk cannot open while the car
// moves").
func replyLine(r protocol.Reply) string {
	line := fmt.Sprintf("%s %s %s", r.ID, r.Action, r.Status)
	if r.Reason != "" {
		line += ": " + string(r.Reason)
	}
	if r.Message != "" {
		line += ": " + r.Message
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
	var ae *api.Error
	if errors.As(err, &ae) && ae.Reason == protocol.ReasonVehicleUnknown {
		return fmt.Sprintf("no car %s answers on the local link %s: are you next to it (--link ADDR)?", vin, link)
	}
	if errors.Is(err, phone.ErrCarUnreachable) {
		return fmt.Sprintf("nothing answers on the local link %s: are you next to the car (--link ADDR, SIM_LINK)?", link)
	}
	if errors.Is(err, sign.ErrCarNotProven) {
		if protocol.ReasonOf(err) == protocol.ReasonUnauthenticated {
			return "a phone without a login session learns the gateway's key with --gateway-key KEY (GET /v1/gateway-key); " +
				"a car provisioned before link certification needs new credentials (gateway admin vehicle reissue VIN)"
		}
		return "whatever answered on the local link is not the car " + vin + ": nothing was sent to it"
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
