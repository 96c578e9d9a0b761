// Package demo is `gateway demo`: one process starts the embedded broker, the gateway (data in
// a temporary directory), a fleet of simulated cars and a phone, and tells the story step by
// step. With --json the story is told on stderr and stdout holds one JSON object whose "ok" is
// true only when every step did what the story expects.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"telematics/gateway/audit"
	"telematics/gateway/harness"
	"telematics/pkg/api"
	"telematics/pkg/cmdline"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// Step is one told and checked step of the story.
type Step struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
	Ms     int64  `json:"ms"`
}

// Summary is the --json last line.
type Summary struct {
	OK     bool   `json:"ok"`
	Cars   int    `json:"cars"`
	Steps  []Step `json:"steps"`
	Millis int64  `json:"duration_ms"`
	// Interrupted: the run was stopped (Ctrl-C, or stdout closed) before the story ended.
	Interrupted bool `json:"interrupted,omitempty"`
}

// Options configure a demo run.
type Options struct {
	Cars    int
	DataDir string // "" means a temporary directory removed at the end
	Out     io.Writer
	Logger  *slog.Logger
	// Console keeps the world running after the story (gateway, broker, cars) and prints the
	// operator console's URL and a fresh operator login, until ctx ends (Ctrl-C).
	Console bool
}

// ErrOutputClosed means the reader of the demo's output went away (`gateway demo | head -1`):
// the demo stops, removes its temporary directory and exits, instead of dying of SIGPIPE.
var ErrOutputClosed = errors.New("output closed")

// Command is `gateway demo`.
func Command() *cobra.Command {
	var (
		o               Options
		asJSON, verbose bool
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start everything in one process and tell the story (--json for a machine summary)",
		Long: `Start the embedded broker, the gateway (data in a temporary directory, removed at the end),
a fleet of simulated cars and two phones in one process, and tell the story step by step:
enrollment, pairing, unlocking with a code, a replay refused, sharing and revoking, then the
cloud goes down and the car still opens over the local link. Exit status 0 when every step
did what the story expects. With --json the story goes to stderr and stdout holds one JSON
line: gateway demo --json | jq .ok`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "tell the story on stderr and print one JSON summary on stdout")
	cmd.Flags().IntVar(&o.Cars, "cars", 20, "simulated cars (2 to 5000)")
	cmd.Flags().StringVar(&o.DataDir, "data", "", "keep the demo's data in this `directory` instead of a temporary one")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "show the components' logs")
	cmd.Flags().BoolVar(&o.Console, "console", false, "after the story, keep everything running and print the operator console's URL and a login, until Ctrl-C")
	// GATEWAY_DATA names the gateway's own data directory, never the demo's.
	cmdline.SetEnv(cmd, "data", "GATEWAY_DEMO_DATA")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.Cars < 2 || o.Cars > 5000 {
			return cmdline.UsageError("--cars must be 2..5000, got %d", o.Cars)
		}
		if code := runMain(cmd.Context(), o, asJSON, verbose, cmd.OutOrStdout(), cmd.ErrOrStderr()); code != 0 {
			return cmdline.WithExitCode(code, nil) // the story told what happened
		}
		return nil
	}
	return cmd
}

// Main is `gateway demo ARGS…` as the gateway binary runs it; it returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := cmdline.NewRoot("gateway", "The cloud side of the telematics system", "GATEWAY")
	root.AddCommand(Command())
	return cmdline.Execute(ctx, root, append([]string{"demo"}, args...), strings.NewReader(""), stdout, stderr)
}

// runMain runs the story for Main: the narration goes to stdout, or to stderr with asJSON
// (stdout then holds only the summary line). A write that fails on stdout stops the run.
func runMain(ctx context.Context, o Options, asJSON, verbose bool, stdout, stderr io.Writer) int {
	o.Logger = slog.New(slog.DiscardHandler)
	if verbose {
		o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	out := &watchedWriter{w: stdout, cancel: cancel}
	o.Out = out
	if asJSON {
		o.Out = stderr
	}
	sum := Run(ctx, o)
	if asJSON {
		b, _ := json.Marshal(sum)
		fmt.Fprintln(out, string(b))
	}
	if errors.Is(context.Cause(ctx), ErrOutputClosed) {
		fmt.Fprintln(stderr, "gateway demo: stdout was closed; stopped and cleaned up")
		return 1
	}
	if !sum.OK {
		return 1
	}
	return 0
}

// watchedWriter cancels the run with ErrOutputClosed once a write fails (EPIPE: the reader
// went away), so the demo ends and cleans up instead of telling the story to nobody.
type watchedWriter struct {
	w      io.Writer
	cancel context.CancelCauseFunc
}

func (w *watchedWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil {
		w.cancel(ErrOutputClosed)
	}
	return n, err
}

type story struct {
	ctx   context.Context
	out   io.Writer
	steps []Step
	n     int
	// interrupted is set once the run's context ended: the remaining steps are skipped, and
	// "interrupted" is said once instead of a failure per step.
	interrupted bool
}

func (s *story) say(format string, args ...any) { fmt.Fprintf(s.out, "      "+format+"\n", args...) }

// do runs one step, narrating its title and its outcome.
func (s *story) do(name string, fn func() (string, error)) bool {
	if s.stopped() {
		return false
	}
	s.n++
	fmt.Fprintf(s.out, "[%d] %s\n", s.n, name)
	start := time.Now()
	detail, err := fn()
	if err != nil && s.stopped() {
		return false // the step did not fail: it was cut short
	}
	st := Step{Name: name, OK: err == nil, Detail: detail, Ms: time.Since(start).Milliseconds()}
	if err != nil {
		st.Detail = err.Error()
		fmt.Fprintf(s.out, "      FAILED: %v\n", err)
	} else if detail != "" {
		fmt.Fprintf(s.out, "      ok: %s (%d ms)\n", detail, st.Ms)
	}
	s.steps = append(s.steps, st)
	return err == nil
}

// stopped reports whether the run's context ended, and says "interrupted" the first time.
func (s *story) stopped() bool {
	if s.ctx.Err() == nil {
		return false
	}
	if !s.interrupted {
		s.interrupted = true
		fmt.Fprintf(s.out, "      interrupted\n")
	}
	return true
}

// Run tells the story and returns its summary. When ctx ends the story stops where it is,
// cleans up (the temporary directory too) and the summary says Interrupted.
func Run(ctx context.Context, o Options) Summary {
	start := time.Now()
	s := &story{ctx: ctx, out: o.Out}
	sum := Summary{Cars: o.Cars}
	finish := func() Summary {
		sum.Steps = s.steps
		sum.OK = len(s.steps) > 0
		for _, st := range s.steps {
			sum.OK = sum.OK && st.OK
		}
		sum.Millis = time.Since(start).Milliseconds()
		if s.interrupted {
			sum.OK, sum.Interrupted = false, true
			fmt.Fprintf(o.Out, "\nThe demo was interrupted after %d steps.\n", len(s.steps))
		} else if sum.OK {
			fmt.Fprintf(o.Out, "\nAll %d steps did what the story expects (%d ms).\n", len(s.steps), sum.Millis)
		} else {
			fmt.Fprintf(o.Out, "\nThe demo did NOT go as expected; see FAILED above.\n")
		}
		return sum
	}

	dir := o.DataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "gateway-demo-")
		if err != nil {
			s.do("prepare a temporary data directory", func() (string, error) { return "", err })
			return finish()
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}

	cloud, err := harness.NewCloud(harness.Options{Dir: filepath.Join(dir, "gateway"), Logger: o.Logger.With("component", "gateway"),
		Configure: harness.ManyPeople, TLS: true})
	if err != nil {
		s.do("pick loopback ports", func() (string, error) { return "", err })
		return finish()
	}
	if !s.do("Start the gateway with its embedded MQTT broker", func() (string, error) {
		if err := cloud.Up(ctx); err != nil {
			return "", err
		}
		return fmt.Sprintf("HTTPS %s, MQTT over TLS %s (its own CA: %s), data in %s", cloud.HTTPURL(), cloud.BrokerURL(), cloud.CAFile(), cloud.Dir), nil
	}) {
		return finish()
	}
	defer cloud.Down()

	var creds []protocol.Credentials
	if !s.do(fmt.Sprintf("Provision %d cars through the admin API", o.Cars), func() (string, error) {
		var err error
		if creds, err = cloud.Provision(ctx, o.Cars); err != nil {
			return "", err
		}
		return fmt.Sprintf("each car got its VIN as MQTT identity, a gateway-signed token and the gateway's public key; first is %s", creds[0].VIN), nil
	}) {
		return finish()
	}
	mine := creds[0].VIN
	alice := &harness.Person{Name: "alice", Password: randomPassword()}
	bob := &harness.Person{Name: "bob", Password: randomPassword()}
	if !s.do("Create users alice (owner of "+mine+") and bob", func() (string, error) {
		if err := cloud.AddUser(ctx, alice.Name, alice.Password, mine); err != nil {
			return "", err
		}
		if err := cloud.AddUser(ctx, bob.Name, bob.Password, ""); err != nil {
			return "", err
		}
		return "passwords stored as argon2id hashes", nil
	}) {
		return finish()
	}

	var fleet *harness.Fleet
	if !s.do(fmt.Sprintf("Start %d simulated cars and their short-range link", o.Cars), func() (string, error) {
		trust, err := cloud.ClientTLS()
		if err != nil {
			return "", err
		}
		fleet, err = harness.StartFleet(ctx, harness.FleetOptions{Dir: filepath.Join(dir, "sim"), BrokerURL: cloud.BrokerURL(), TLS: trust, Creds: creds,
			Logger: o.Logger.With("component", "fleet")})
		if err != nil {
			return "", err
		}
		vins := make([]string, len(creds))
		for i, c := range creds {
			vins[i] = c.VIN
		}
		if err := cloud.WaitOnline(ctx, 15*time.Second, vins...); err != nil {
			return "", err
		}
		return fmt.Sprintf("%d/%d cars online in the gateway's twin; local link (stands for BLE/NFC) on %s", len(creds), len(creds), fleet.Link.Addr()), nil
	}) {
		return finish()
	}
	defer fleet.Stop()

	if !s.do("Alice logs in and enrolls her authenticator app (TOTP, RFC 6238)", func() (string, error) {
		if err := alice.Login(ctx, cloud); err != nil {
			return "", err
		}
		codes, err := alice.Enroll(ctx, cloud)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("confirmed with the authenticator's first code; %d single-use recovery codes issued", len(codes)), nil
	}) {
		return finish()
	}
	var aliceKey protocol.WhitelistKey
	if !s.do("Alice's phone makes a key pair and pairs it with her car (TOTP code required)", func() (string, error) {
		var err error
		if aliceKey, err = alice.Pair(ctx, mine); err != nil {
			return "", err
		}
		if err := cloud.WaitSynced(ctx, 10*time.Second, mine); err != nil {
			return "", err
		}
		return fmt.Sprintf("key %s (private half never leaves the phone); the car stored the signed whitelist and acknowledged it", aliceKey.ID), nil
	}) {
		return finish()
	}

	app, err := phone.ConnectWith(ctx, alice.Session, phone.ConnectOptions{Key: alice.Key, Logger: o.Logger.With("component", "phone")})
	if err != nil {
		s.do("Alice's phone connects to the broker", func() (string, error) { return "", err })
		return finish()
	}
	defer app.Close()
	send := func(action protocol.Action, code string, wantStatus string, wantReason protocol.Reason, check func(protocol.Reply) error) (string, error) {
		var trail []string
		final, err := app.Send(ctx, phone.Request{VIN: mine, Action: action, TOTP: code}, func(r protocol.Reply) {
			t := r.Status
			if r.Reason != "" {
				t += " (" + string(r.Reason) + ")"
			}
			trail = append(trail, t)
		})
		if err != nil {
			return "", err
		}
		if final.Status != wantStatus || final.Reason != wantReason {
			return "", fmt.Errorf("expected %s %s, got %s %s", wantStatus, wantReason, final.Status, final.Reason)
		}
		if check != nil {
			if err := check(final); err != nil {
				return "", err
			}
		}
		return "cloud: " + strings.Join(trail, " → "), nil
	}
	lockedIs := func(want bool) func(protocol.Reply) error {
		return func(r protocol.Reply) error {
			if got, ok := r.State[protocol.VSSIsLocked].(bool); !ok || got != want {
				return fmt.Errorf("car reports %s=%v, expected %v", protocol.VSSIsLocked, r.State[protocol.VSSIsLocked], want)
			}
			return nil
		}
	}

	s.do("Alice unlocks through the cloud without a code: refused", func() (string, error) {
		return send(protocol.ActionUnlock, "", protocol.ReplyRejected, protocol.ReasonTOTPRequired, nil)
	})
	var code string
	s.do("Alice unlocks with the code from her authenticator", func() (string, error) {
		var err error
		if code, err = alice.Code(); err != nil {
			return "", err
		}
		out, err := send(protocol.ActionUnlock, code, protocol.ReplyExecuted, "", lockedIs(false))
		return out + "; the car checked the gateway's grant and Alice's phone signature", err
	})
	s.do("The same code once more is a replay", func() (string, error) {
		return send(protocol.ActionUnlock, code, protocol.ReplyRejected, protocol.ReasonTOTPReplayed, nil)
	})
	s.do("Alice locks: not a guarded action", func() (string, error) {
		return send(protocol.ActionLock, "", protocol.ReplyExecuted, "", lockedIs(true))
	})

	var bobKey protocol.WhitelistKey
	s.do("Alice shares her car with Bob as valet; Bob pairs his phone; then Alice revokes Bob's key", func() (string, error) {
		// Alice's pairing elevated her login session: sharing and revoking within
		// step_up_ttl need no new code.
		if _, err := alice.Session.Client().ShareKey(ctx, api.ShareRequest{VIN: mine, User: bob.Name, Role: protocol.RoleValet}); err != nil {
			return "", err
		}
		if err := bob.Login(ctx, cloud); err != nil {
			return "", err
		}
		if _, err := bob.Enroll(ctx, cloud); err != nil {
			return "", err
		}
		var err error
		if bobKey, err = bob.Pair(ctx, mine); err != nil {
			return "", err
		}
		rev, err := alice.Session.Client().RevokeKey(ctx, api.RevokeRequest{VIN: mine, KeyID: bobKey.ID})
		if err != nil {
			return "", err
		}
		if err := cloud.WaitSynced(ctx, 10*time.Second, mine); err != nil {
			return "", err
		}
		return fmt.Sprintf("whitelist version %d, without Bob's key, acknowledged by the car", rev.Version), nil
	})

	if !s.do("THE CLOUD GOES DOWN: gateway and broker stop", func() (string, error) {
		if err := cloud.Down(); err != nil {
			return "", err
		}
		return "no broker, no gateway, no network beyond the short-range link", nil
	}) {
		return finish()
	}
	s.do("Alice unlocks her car anyway", func() (string, error) {
		out, err := phone.SendAuto(ctx, phone.AutoOptions{Session: alice.Session, Key: alice.Key, LinkAddr: fleet.Link.Addr(),
			CloudTimeout: time.Second}, phone.Request{VIN: mine, Action: protocol.ActionUnlock}, nil)
		if err != nil {
			return "", err
		}
		if out.Path != phone.PathLocal || out.Reply.Status != protocol.ReplyExecuted {
			return "", fmt.Errorf("expected executed over the local link, got %s %s %s", out.Path, out.Reply.Status, out.Reply.Reason)
		}
		return fmt.Sprintf("path: local (%s); the car checked Alice's signature against its own whitelist: executed", out.Fallback), nil
	})
	s.do("Bob's revoked key over the local link: refused by the car itself", func() (string, error) {
		res, err := phone.LocalSend(ctx, fleet.Link.Addr(), bob.Session.LinkTrust(), bob.Key, bob.Name, phone.Request{VIN: mine, Action: protocol.ActionUnlock})
		if err != nil {
			return "", err
		}
		if res.Status != protocol.ResultRejected || res.Reason != protocol.ReasonKeyRevoked {
			return "", fmt.Errorf("expected rejected key_revoked, got %s %s", res.Status, res.Reason)
		}
		return "rejected (key_revoked)", nil
	})

	if !s.do("The cloud comes back; the car sends its journal", func() (string, error) {
		if err := cloud.Up(ctx); err != nil {
			return "", err
		}
		var filed []audit.Event
		err := harness.WaitFor(ctx, 30*time.Second, func() error {
			if filed, _ = cloud.G.Audit().Query(audit.Filter{VIN: mine, Kind: audit.KindVehicle}); len(filed) < 2 {
				return errors.New("not yet")
			}
			return nil
		})
		if err != nil {
			return "", fmt.Errorf("the car's journal did not reach the audit log: %d entries", len(filed))
		}
		var parts []string
		for i := len(filed) - 1; i >= 0; i-- {
			e := filed[i]
			t := e.User + " " + e.Action + ": " + e.Outcome
			if e.Reason != "" {
				t += " (" + e.Reason + ")"
			}
			parts = append(parts, t)
		}
		return "in the gateway's audit log: " + strings.Join(parts, "; "), nil
	}) {
		return finish()
	}
	s.do("No code, secret or password in any audit record", func() (string, error) {
		all, err := cloud.G.Audit().Query(audit.Filter{Limit: 1 << 30})
		if err != nil {
			return "", err
		}
		for _, e := range all {
			b, _ := json.Marshal(e)
			rec := string(b)
			// The code is six digits: looked for on its own, not inside a timestamp.
			if containsToken(rec, code) || strings.Contains(rec, alice.Password) || strings.Contains(rec, bob.Password) {
				return "", fmt.Errorf("audit record %d contains a secret", e.Seq)
			}
		}
		return fmt.Sprintf("%d records checked", len(all)), nil
	})
	sum = finish()
	if o.Console && sum.OK {
		serveConsole(ctx, o.Out, cloud)
	}
	return sum
}

// serveConsole adds an operator with a random password, prints the console's URL and the
// login, and waits for ctx to end: the gateway, the broker and the cars keep running.
func serveConsole(ctx context.Context, out io.Writer, cloud *harness.Cloud) {
	password := randomPassword()
	if _, err := cloud.Client().AddOperator(ctx, "demo", "admin", password); err != nil {
		fmt.Fprintf(out, "\nThe console's operator could not be created: %v\n", err)
		return
	}
	fmt.Fprintf(out, `
The operator console: %s/
  (HTTPS with the demo's own CA: trust %s, or accept the browser's warning)
  Log in as operator: demo
           password: %s
  (an operator of this run only: the demo's data goes when it stops; at the first login you
  enroll an authenticator app from the QR code)
Everything keeps running; Ctrl-C stops the demo.
`, cloud.HTTPURL(), cloud.CAFile(), password)
	<-ctx.Done()
	fmt.Fprintln(out, "Stopping.")
}

// containsToken reports whether s holds secret on its own: not as part of a longer run of
// letters and digits, so a 6-digit code is not "found" inside a timestamp or a sequence number.
func containsToken(s, secret string) bool {
	if secret == "" {
		return false
	}
	for i := 0; ; {
		j := strings.Index(s[i:], secret)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(secret)
		if (start == 0 || !isAlnum(s[start-1])) && (end == len(s) || !isAlnum(s[end])) {
			return true
		}
		i = start + 1
	}
}

func isAlnum(b byte) bool {
	return '0' <= b && b <= '9' || 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z'
}

func randomPassword() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
