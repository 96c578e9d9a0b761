// Package demo is `gateway demo`: one process starts the embedded broker, the gateway (data in
// a temporary directory), a fleet of simulated cars and a phone, and tells the story step by
// step. With --json the last line is one JSON object whose "ok" is true only when every step
// did what the story expects.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pquerna/otp/totp"

	"telematics/gateway/audit"
	"telematics/gateway/httpapi"
	"telematics/gateway/server"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
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
}

// Options configure a demo run.
type Options struct {
	Cars    int
	DataDir string // "" means a temporary directory removed at the end
	Out     io.Writer
	Logger  *slog.Logger
}

// Main is `gateway demo [--json] [--cars N] [--data DIR]`.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gateway demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "end with one JSON summary line")
	cars := fs.Int("cars", 20, "simulated cars")
	data := fs.String("data", "", "keep the demo's data here instead of a temporary directory")
	verbose := fs.Bool("v", false, "show the components' logs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cars < 2 || *cars > 5000 {
		fmt.Fprintln(stderr, "gateway demo: --cars must be 2..5000")
		return 2
	}
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	sum := Run(ctx, Options{Cars: *cars, DataDir: *data, Out: stdout, Logger: logger})
	if *asJSON {
		b, _ := json.Marshal(sum)
		fmt.Fprintln(stdout, string(b))
	}
	if !sum.OK {
		return 1
	}
	return 0
}

type story struct {
	out   io.Writer
	steps []Step
	n     int
}

func (s *story) say(format string, args ...any) { fmt.Fprintf(s.out, "      "+format+"\n", args...) }

// do runs one step, narrating its title and its outcome.
func (s *story) do(name string, fn func() (string, error)) bool {
	s.n++
	fmt.Fprintf(s.out, "[%d] %s\n", s.n, name)
	start := time.Now()
	detail, err := fn()
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

// Run tells the story and returns its summary.
func Run(ctx context.Context, o Options) Summary {
	start := time.Now()
	s := &story{out: o.Out}
	sum := Summary{Cars: o.Cars}
	finish := func() Summary {
		sum.Steps = s.steps
		sum.OK = len(s.steps) > 0
		for _, st := range s.steps {
			sum.OK = sum.OK && st.OK
		}
		sum.Millis = time.Since(start).Milliseconds()
		if sum.OK {
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

	var g *server.Gateway
	if !s.do("Start the gateway with its embedded MQTT broker", func() (string, error) {
		cfg := server.DefaultConfig()
		cfg.Data = filepath.Join(dir, "gateway")
		cfg.MQTTAddr, cfg.WSAddr, cfg.HTTPAddr = "127.0.0.1:0", "", "127.0.0.1:0"
		var err error
		g, err = server.Start(ctx, cfg, server.Options{Logger: o.Logger.With("component", "gateway")})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("HTTP %s, MQTT %s, data in %s", g.HTTPURL(), g.BrokerURL(), cfg.Data), nil
	}) {
		return finish()
	}
	defer g.Close()
	admin := func(method, path string, in, out any) error {
		return phone.Call(ctx, method, g.HTTPURL()+path, g.AdminToken(), in, out)
	}

	var creds []protocol.Credentials
	if !s.do(fmt.Sprintf("Provision %d cars through the admin API", o.Cars), func() (string, error) {
		if err := admin(http.MethodPost, "/v1/admin/vehicles", httpapi.AddVehiclesRequest{Count: o.Cars}, &creds); err != nil {
			return "", err
		}
		if len(creds) != o.Cars {
			return "", fmt.Errorf("asked for %d cars, got %d credentials", o.Cars, len(creds))
		}
		return fmt.Sprintf("each car got its VIN as MQTT identity and a gateway-signed token; first is %s", creds[0].VIN), nil
	}) {
		return finish()
	}
	mine, other := creds[0].VIN, creds[1].VIN

	password := randomPassword()
	if !s.do("Create user alice and make her the owner of "+mine, func() (string, error) {
		if err := admin(http.MethodPost, "/v1/admin/users", httpapi.AddUserRequest{Username: "alice", Password: password}, nil); err != nil {
			return "", err
		}
		if err := admin(http.MethodPost, "/v1/admin/vehicles/"+mine+"/assign", httpapi.AssignRequest{User: "alice", Role: protocol.RoleOwner}, nil); err != nil {
			return "", err
		}
		return "password stored as an argon2id hash", nil
	}) {
		return finish()
	}

	fleetCtx, stopFleet := context.WithCancel(ctx)
	var fleetWG sync.WaitGroup
	defer func() { stopFleet(); fleetWG.Wait() }()
	if !s.do(fmt.Sprintf("Start %d simulated cars; each connects with its own credentials", o.Cars), func() (string, error) {
		st, err := vehicle.OpenStore(filepath.Join(dir, "sim", "vehicles.db"))
		if err != nil {
			return "", err
		}
		fleetWG.Add(1)
		go func() {
			defer fleetWG.Done()
			defer st.Close()
			_, err := vehicle.RunFleet(fleetCtx, vehicle.FleetConfig{BrokerURL: g.BrokerURL(), Creds: creds, Store: st,
				TelemetryInterval: time.Second, ConnectRate: 1000, Logger: o.Logger.With("component", "fleet")})
			if err != nil && !errors.Is(err, context.Canceled) {
				o.Logger.Error("fleet stopped", "err", err)
			}
		}()
		online := 0
		err = waitFor(ctx, 15*time.Second, func() bool {
			online = 0
			for _, c := range creds {
				if tw, ok := g.Router().Twin(c.VIN); ok && tw.Status == protocol.StatusOnline {
					online++
				}
			}
			return online == len(creds)
		})
		if err != nil {
			return "", fmt.Errorf("only %d of %d cars came online", online, len(creds))
		}
		return fmt.Sprintf("%d/%d cars online in the gateway's twin", online, len(creds)), nil
	}) {
		return finish()
	}

	var app *phone.App
	var sess *phone.Session
	if !s.do("Alice's phone logs in and connects to the broker", func() (string, error) {
		var err error
		sess, err = phone.Login(ctx, g.HTTPURL(), "alice", password, "")
		if err != nil {
			return "", err
		}
		app, err = phone.Connect(ctx, sess, "", o.Logger.With("component", "phone"))
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("app token valid until %s; MQTT identity alice, may touch only app/alice/…",
			time.UnixMilli(sess.ExpiresAtMs).Format(time.TimeOnly)), nil
	}) {
		return finish()
	}
	defer app.Close()

	send := func(vin string, action protocol.Action, code string, wantStatus string, wantReason protocol.Reason, check func(protocol.Reply) error) (string, error) {
		var trail []string
		final, err := app.Send(ctx, phone.Request{VIN: vin, Action: action, TOTP: code}, func(r protocol.Reply) {
			t := r.Status
			if r.Reason != "" {
				t += " (" + string(r.Reason) + ")"
			}
			trail = append(trail, t)
			s.say("gateway replied: %s", t)
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
		return strings.Join(trail, " → "), nil
	}
	lockedIs := func(want bool) func(protocol.Reply) error {
		return func(r protocol.Reply) error {
			if got, ok := r.State[protocol.VSSIsLocked].(bool); !ok || got != want {
				return fmt.Errorf("car reports %s=%v, expected %v", protocol.VSSIsLocked, r.State[protocol.VSSIsLocked], want)
			}
			return nil
		}
	}

	s.do("Alice unlocks her car through the cloud (no second factor enrolled yet)", func() (string, error) {
		return send(mine, protocol.ActionUnlock, "", protocol.ReplyExecuted, "", lockedIs(false))
	})
	s.do("Alice locks it again", func() (string, error) {
		return send(mine, protocol.ActionLock, "", protocol.ReplyExecuted, "", lockedIs(true))
	})

	var secret string
	var confirmedAt time.Time
	if !s.do("Alice enrolls her authenticator app (TOTP, RFC 6238)", func() (string, error) {
		var e struct {
			URL    string `json:"otpauth_url"`
			Secret string `json:"secret"`
		}
		if err := phone.Call(ctx, http.MethodPost, g.HTTPURL()+"/v1/2fa/enroll", sess.Token, map[string]string{}, &e); err != nil {
			return "", err
		}
		secret = e.Secret
		s.say("the app shows a QR code of %s", redactSecret(e.URL))
		confirmedAt = time.Now()
		code, err := totp.GenerateCode(secret, confirmedAt)
		if err != nil {
			return "", err
		}
		var c struct {
			Codes []string `json:"recovery_codes"`
		}
		if err := phone.Call(ctx, http.MethodPost, g.HTTPURL()+"/v1/2fa/confirm", sess.Token, map[string]string{"code": code}, &c); err != nil {
			return "", err
		}
		return fmt.Sprintf("confirmed with the authenticator's first code; %d single-use recovery codes issued", len(c.Codes)), nil
	}) {
		return finish()
	}
	s.do("Unlock without a code is now refused", func() (string, error) {
		return send(mine, protocol.ActionUnlock, "", protocol.ReplyRejected, protocol.ReasonTOTPRequired, nil)
	})
	s.do("Unlock with the code from her authenticator", func() (string, error) {
		// The confirmation used the current 30 s step; a code is accepted once, so the
		// authenticator's next code (±1 step of skew is allowed) authorizes this one.
		code, err := totp.GenerateCode(secret, confirmedAt.Add(30*time.Second))
		if err != nil {
			return "", err
		}
		return send(mine, protocol.ActionUnlock, code, protocol.ReplyExecuted, "", lockedIs(false))
	})
	s.do("The same code once more is a replay", func() (string, error) {
		code, _ := totp.GenerateCode(secret, confirmedAt.Add(30*time.Second))
		return send(mine, protocol.ActionUnlock, code, protocol.ReplyRejected, protocol.ReasonTOTPReplayed, nil)
	})
	s.do("Lock again: not a guarded action", func() (string, error) {
		return send(mine, protocol.ActionLock, "", protocol.ReplyExecuted, "", lockedIs(true))
	})
	s.do("Alice tries to unlock a car that is not hers: refused", func() (string, error) {
		return send(other, protocol.ActionUnlock, "", protocol.ReplyRejected, protocol.ReasonForbidden, nil)
	})
	s.do("Every decision is in the gateway's audit log", func() (string, error) {
		evs, err := g.Audit().Query(auditFilter(mine))
		if err != nil {
			return "", err
		}
		executed := 0
		for _, e := range evs {
			if e.Kind == "result" && e.Outcome == protocol.ReplyExecuted {
				executed++
			}
		}
		if executed != 4 {
			return "", fmt.Errorf("expected 4 executed results for %s in the audit log, found %d", mine, executed)
		}
		tfa, err := g.Audit().Query(audit.Filter{User: "alice", Kind: audit.KindTwoFactor})
		if err != nil {
			return "", err
		}
		all, err := g.Audit().Query(audit.Filter{Limit: 100000})
		if err != nil {
			return "", err
		}
		for _, e := range all {
			b, _ := json.Marshal(e)
			if strings.Contains(string(b), secret) || strings.Contains(string(b), password) {
				return "", fmt.Errorf("audit record %d contains a secret", e.Seq)
			}
		}
		return fmt.Sprintf("%d records for %s (4 executed commands), %d 2FA events for alice; no code or secret in any", len(evs), mine, len(tfa)), nil
	})
	return finish()
}

// redactSecret hides the secret parameter of an otpauth URL.
func redactSecret(u string) string {
	i := strings.Index(u, "secret=")
	if i < 0 {
		return u
	}
	j := strings.IndexByte(u[i:], '&')
	if j < 0 {
		return u[:i] + "secret=…"
	}
	return u[:i] + "secret=…" + u[i+j:]
}

func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func randomPassword() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func auditFilter(vin string) audit.Filter { return audit.Filter{VIN: vin, Limit: 1000} }
