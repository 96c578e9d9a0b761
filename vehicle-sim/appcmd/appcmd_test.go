package appcmd

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/api/apitest"
	"telematics/pkg/cmdline"
	"telematics/pkg/phone"
	"telematics/pkg/phone/phonetest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

const (
	vin   = "WVWZZZ1JZXW000001"
	token = "app-token"
)

// phoneEnv is one simulated phone: its own HOME (so the default session and key paths are
// inside the test's directory) and no other SIM_* settings.
type phoneEnv struct {
	t    *testing.T
	home string
	vars map[string]string
}

func newPhone(t *testing.T) *phoneEnv {
	home := t.TempDir()
	return &phoneEnv{t: t, home: home, vars: map[string]string{"HOME": home}}
}

func (p *phoneEnv) keyPath() string     { return filepath.Join(p.home, ".vehicle-sim", "phone.key") }
func (p *phoneEnv) sessionPath() string { return filepath.Join(p.home, ".vehicle-sim", "session.json") }

// run runs `vehicle-sim app ARGS…` and returns exit code, stdout and stderr.
func (p *phoneEnv) run(args ...string) (int, string, string) {
	p.t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var environ []string
	for k, v := range p.vars {
		environ = append(environ, k+"="+v)
	}
	code := Run(ctx, args, Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return p.vars[k] },
		Environ: environ})
	return code, out.String(), errb.String()
}

// login writes a session as `app login` would.
func (p *phoneEnv) login(gatewayURL, brokerURL string) {
	p.t.Helper()
	s := &phone.Session{Gateway: gatewayURL, User: "alice", Token: token, BrokerURL: brokerURL,
		ClientIDPrefix: "alice-", ClientID: fmt.Sprintf("alice-%d", time.Now().UnixNano()),
		ExpiresAtMs: time.Now().Add(time.Hour).UnixMilli()}
	if err := SaveSession(p.sessionPath(), s); err != nil {
		p.t.Fatal(err)
	}
}

// createKey runs `key create` and returns the key.
func (p *phoneEnv) createKey() *sign.Signer {
	p.t.Helper()
	if code, out, errs := p.run("key", "create"); code != 0 {
		p.t.Fatalf("key create: %d %s %s", code, out, errs)
	}
	k, err := phone.LoadKey(p.keyPath())
	if err != nil {
		p.t.Fatal(err)
	}
	return k
}

func TestUsage(t *testing.T) {
	t.Parallel()
	p := newPhone(t)
	code, _, errs := p.run()
	if code != 2 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"key create", "key pair VIN", "key list [VIN]", "key share VIN USER --role driver|valet",
		"key revoke VIN KEYID", "--local", "--cloud-only", "--cloud-timeout", "SIM_PHONE_KEY", "SIM_LINK", "-key"} {
		if !strings.Contains(errs, want) {
			t.Errorf("usage lacks %q", want)
		}
	}
	if code, _, errs := p.run("key"); code != 2 || !strings.Contains(errs, "need create") {
		t.Fatalf("key without command: %d %s", code, errs)
	}
	if code, _, errs := p.run("key", "fly"); code != 2 || !strings.Contains(errs, `unknown command "fly"`) {
		t.Fatalf("unknown key command: %d %s", code, errs)
	}
}

func TestKeyCreate(t *testing.T) {
	t.Parallel()
	p := newPhone(t)
	code, out, errs := p.run("key", "create")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	k, err := phone.LoadKey(p.keyPath())
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != k.KID() || !strings.Contains(errs, "key pair VIN") {
		t.Fatalf("stdout %q (want the key id %s), stderr %q", out, k.KID(), errs)
	}
	if fi, _ := os.Stat(p.keyPath()); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o", fi.Mode().Perm())
	}

	// No overwrite without --force.
	if code, _, errs := p.run("key", "create"); code != 1 || !strings.Contains(errs, "--force") {
		t.Fatalf("second create: %d %s", code, errs)
	}
	if k2, _ := phone.LoadKey(p.keyPath()); k2.KID() != k.KID() {
		t.Fatal("the refused create replaced the key")
	}
	code, out, errs = p.run("key", "create", "--force")
	if code != 0 || strings.TrimSpace(out) == k.KID() || !strings.Contains(errs, "revoke VIN --totp CODE -- "+k.KID()) {
		t.Fatalf("create --force: %d %q %q", code, out, errs)
	}

	// --key and SIM_PHONE_KEY choose the file.
	other := filepath.Join(t.TempDir(), "other.key")
	if code, _, errs := p.run("--key", other, "key", "create"); code != 0 {
		t.Fatalf("--key: %s", errs)
	}
	env := filepath.Join(t.TempDir(), "env.key")
	p.vars["SIM_PHONE_KEY"] = env
	if code, _, errs := p.run("key", "create"); code != 0 {
		t.Fatalf("SIM_PHONE_KEY: %s", errs)
	}
	for _, f := range []string{other, env} {
		if _, err := phone.LoadKey(f); err != nil {
			t.Fatal(err)
		}
	}
	code, out, _ = p.run("key", "show", "--json")
	var shown map[string]string
	_ = json.Unmarshal([]byte(out), &shown)
	if k3, _ := phone.LoadKey(env); code != 0 || shown["key_id"] != k3.KID() || shown["path"] != env {
		t.Fatalf("key show: %d %s", code, out)
	}
	if pub, err := sign.DecodePublic(shown["public_key"]); err != nil || sign.KeyID(pub) != shown["key_id"] {
		t.Fatalf("key show public key: %v", err)
	}
}

// gatewayStub is the gateway's key API as the contract describes it; answers are set per
// route from the request body decoded as JSON.
type gatewayStub struct{ *apitest.Gateway }

func newGatewayStub(t *testing.T) gatewayStub { return gatewayStub{apitest.NewGateway(t, token)} }

func (g gatewayStub) on(route string, f func(map[string]any) (int, any)) { g.OnJSON(route, f) }

func refusal(status int, reason protocol.Reason) func(map[string]any) (int, any) {
	return func(map[string]any) (int, any) {
		return status, map[string]string{"error": string(reason), "message": "refused by the stub"}
	}
}

func TestKeyCommandsAgainstGateway(t *testing.T) {
	t.Parallel()
	g := newGatewayStub(t)
	p := newPhone(t)
	p.login(g.URL, "tcp://127.0.0.1:1")
	key := p.createKey()
	pub, _ := sign.EncodePublic(key.Public())
	until := time.Date(2030, 1, 31, 18, 0, 0, 0, time.UTC)
	revokedAt := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	status := api.KeyStatus{VIN: vin, Version: 5, AckedVersion: 4, Keys: []protocol.WhitelistKey{
		{ID: key.KID(), User: "alice", Role: protocol.RoleOwner, Channels: []string{"cloud", "local"}, Label: "pixel"},
		{ID: "bobkey", User: "bob", Role: protocol.RoleValet, Channels: []string{"local"}, NotAfterMs: until.UnixMilli(), RevokedAtMs: revokedAt.UnixMilli()},
	}}
	g.on("POST /v1/keys/pair", func(m map[string]any) (int, any) {
		k := phonetest.KeyFor(key, "alice", protocol.RoleOwner)
		if p, _ := sign.DecodePublic(fmt.Sprint(m["public_key"])); p != nil {
			k.ID = sign.KeyID(p)
		}
		return 201, k
	})
	g.on("GET /v1/keys?vin="+vin, func(map[string]any) (int, any) { return 200, status })
	g.on("GET /v1/keys", func(map[string]any) (int, any) { return 200, map[string]any{"cars": []api.KeyStatus{status}} })
	g.on("POST /v1/keys/share", func(m map[string]any) (int, any) { delete(m, "totp"); return 201, m })
	g.on("POST /v1/keys/revoke", func(m map[string]any) (int, any) {
		return 200, map[string]any{"vin": m["vin"], "key_id": m["key_id"], "version": 6}
	})

	tests := []struct {
		name string
		args []string
		code int
		req  string         // the one request expected ("" = none)
		body map[string]any // fields the body must hold (JSON numbers are float64)
		out  []string       // stdout must contain
		errs []string       // stderr must contain
	}{
		{"pair", []string{"key", "pair", vin, "--totp", "123456", "--label", "pixel"}, 0, "POST /v1/keys/pair",
			map[string]any{"vin": vin, "public_key": pub, "label": "pixel", "totp": "123456"},
			[]string{"key " + key.KID() + " is now a key of " + vin, "role owner", "channels cloud,local", "no expiry"}, nil},
		{"pair lower-case vin", []string{"key", "pair", strings.ToLower(vin)}, 0, "POST /v1/keys/pair",
			map[string]any{"vin": vin}, nil, nil},
		{"pair bad vin", []string{"key", "pair", "NOPE"}, 2, "", nil, nil, []string{"not a VIN"}},
		{"list one car", []string{"key", "list", vin}, 0, "GET /v1/keys?vin=" + vin, nil,
			[]string{"whitelist version 5, acknowledged 4", "NOT YET ON THE CAR", "* " + key.KID(), "bobkey",
				"valet", cmdline.Time(until.UnixMilli()), cmdline.Time(revokedAt.UnixMilli()), "this phone's key"}, nil},
		{"list --json keeps milliseconds", []string{"key", "list", vin, "--json"}, 0, "GET /v1/keys?vin=" + vin, nil,
			[]string{fmt.Sprintf(`"not_after": %d`, until.UnixMilli()), fmt.Sprintf(`"revoked_at": %d`, revokedAt.UnixMilli())}, nil},
		{"list all cars", []string{"key", "list"}, 0, "GET /v1/keys", nil, []string{vin + "  whitelist version 5"}, nil},
		{"share", []string{"key", "share", vin, "bob", "--role", "valet", "--until", "2030-01-31T18:00:00Z", "--channels", "local", "--totp", "111111"}, 0,
			"POST /v1/keys/share", map[string]any{"vin": vin, "user": "bob", "role": "valet", "not_after": float64(until.UnixMilli()),
				"channels": []any{"local"}, "totp": "111111"},
			[]string{"bob may now use " + vin, "role valet", "channels local", "valid until " + cmdline.Time(until.UnixMilli()), "key pair " + vin}, nil},
		{"share defaults", []string{"key", "share", vin, "bob", "--role", "driver"}, 0, "POST /v1/keys/share",
			map[string]any{"role": "driver", "not_after": 0.0, "channels": []any{"cloud", "local"}}, []string{"no expiry"}, nil},
		{"share as owner", []string{"key", "share", vin, "bob", "--role", "owner"}, 2, "", nil, nil, []string{"driver or valet"}},
		{"share bad time", []string{"key", "share", vin, "bob", "--role", "valet", "--until", "tomorrow"}, 2, "", nil, nil, []string{"RFC 3339"}},
		{"share in the past", []string{"key", "share", vin, "bob", "--role", "valet", "--until", "2001-01-01T00:00:00Z"}, 2, "", nil, nil, []string{"in the past"}},
		{"share bad channel", []string{"key", "share", vin, "bob", "--role", "valet", "--channels", "cloud,bluetooth"}, 2, "", nil, nil, []string{`"bluetooth" is not a channel`}},
		{"share bad user", []string{"key", "share", vin, "Bob-X", "--role", "valet"}, 2, "", nil, nil, []string{"not a user name"}},
		{"revoke", []string{"key", "revoke", vin, "bobkey", "--totp", "222222", "--allow-last-owner"}, 0, "POST /v1/keys/revoke",
			map[string]any{"vin": vin, "key_id": "bobkey", "totp": "222222", "allow_last_owner": true},
			[]string{"key bobkey revoked on " + vin + " in whitelist version 6", "acknowledges version 6"}, nil},
		{"revoke keeps the last owner by default", []string{"key", "revoke", vin, "bobkey"}, 0, "POST /v1/keys/revoke",
			map[string]any{"allow_last_owner": false}, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := p.run(tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stdout %s stderr %s", code, tc.code, out, errs)
			}
			reqs, bodies, _ := g.Take()
			if tc.req == "" {
				if len(reqs) != 0 {
					t.Fatalf("requests %v, want none", reqs)
				}
			} else if len(reqs) != 1 || reqs[0] != tc.req {
				t.Fatalf("requests %v, want %s", reqs, tc.req)
			}
			for f, v := range tc.body {
				if got, _ := json.Marshal(bodies[0][f]); string(got) != string(must(json.Marshal(v))) {
					t.Errorf("body %s = %s, want %v (body %v)", f, got, v, bodies[0])
				}
			}
			for _, w := range tc.out {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.errs {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
		})
	}

	t.Run("list --json", func(t *testing.T) {
		code, out, _ := p.run("key", "list", vin, "--json")
		var st api.KeyStatus
		if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Version != 5 || st.AckedVersion != 4 || len(st.Keys) != 2 {
			t.Fatalf("%d %s %v", code, out, err)
		}
		g.Take()
	})
	t.Run("refusals explain themselves", func(t *testing.T) {
		for _, tc := range []struct {
			route  string
			status int
			reason protocol.Reason
			args   []string
			hint   string
		}{
			{"POST /v1/keys/revoke", 401, protocol.ReasonTOTPRequired, []string{"key", "revoke", vin, "bobkey"}, "add --totp CODE"},
			{"POST /v1/keys/share", 401, protocol.ReasonTOTPReplayed, []string{"key", "share", vin, "bob", "--role", "valet", "--totp", "1"}, "wait for the next one"},
			{"POST /v1/keys/pair", 403, protocol.ReasonForbidden, []string{"key", "pair", vin}, "owner must share it with you"},
			{"POST /v1/keys/pair", 403, protocol.ReasonTOTPEnrollmentRequired, []string{"key", "pair", vin}, "vehicle-sim app totp enroll"},
			{"GET /v1/keys?vin=" + vin, 429, protocol.ReasonLockedOut, []string{"key", "list", vin}, "wait a while"},
			{"GET /v1/keys", 400, protocol.ReasonBadRequest, []string{"key", "list"}, "key list VIN"},
		} {
			g.on(tc.route, refusal(tc.status, tc.reason))
			code, _, errs := p.run(tc.args...)
			if code != 1 || !strings.Contains(errs, string(tc.reason)) && tc.reason != protocol.ReasonBadRequest || !strings.Contains(errs, tc.hint) {
				t.Errorf("%v: exit %d, stderr %q; want %s and %q", tc.args, code, errs, tc.reason, tc.hint)
			}
		}
	})

	// Whatever was sent, the private key was not.
	all := g.All()
	if len(all) < 10 {
		t.Fatalf("only %d bodies recorded", len(all))
	}
	assertNoSecret(t, key, all)
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestKeyCommandsNeedSessionAndKey(t *testing.T) {
	t.Parallel()
	p := newPhone(t)
	if code, _, errs := p.run("key", "list", vin); code != 1 || !strings.Contains(errs, "vehicle-sim app login") {
		t.Fatalf("list without session: %d %s", code, errs)
	}
	if code, _, errs := p.run("key", "pair", vin); code != 1 || !strings.Contains(errs, "key create") {
		t.Fatalf("pair without key: %d %s", code, errs)
	}
	// An expired session is not used.
	p.login("http://127.0.0.1:1", "tcp://127.0.0.1:1")
	s, _ := LoadSession(p.sessionPath())
	s.ExpiresAtMs = time.Now().Add(-time.Minute).UnixMilli()
	_ = SaveSession(p.sessionPath(), s)
	if code, _, errs := p.run("key", "revoke", vin, "k"); code != 1 || !strings.Contains(errs, "log in again") {
		t.Fatalf("expired session: %d %s", code, errs)
	}
}

// assertNoSecret fails if the private key appears, in any usual encoding, in bodies.
func assertNoSecret(t *testing.T, k *sign.Signer, bodies [][]byte) {
	t.Helper()
	if len(bodies) == 0 {
		t.Fatal("nothing to check")
	}
	d, _ := k.Private().Bytes()
	sec1, _ := x509.MarshalECPrivateKey(k.Private())
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(k.Private())
	forms := []string{k.Private().D.String()}
	for _, b := range [][]byte{d, sec1, pkcs8} {
		forms = append(forms, protocol.EncodeB64(b), base64.StdEncoding.EncodeToString(b)[:40], fmt.Sprintf("%x", b))
	}
	for _, f := range forms {
		for _, b := range bodies {
			if bytes.Contains(b, []byte(f)) {
				t.Fatalf("the private key was sent: %s", b)
			}
		}
	}
}

func TestSendErrors(t *testing.T) {
	t.Parallel()
	p := newPhone(t)
	tests := []struct {
		name string
		args []string
		code int
		errs string
	}{
		{"no session and no user", []string{"send", vin, "unlock"}, 1, "vehicle-sim app login"},
		{"no session, cloud only", []string{"send", vin, "unlock", "--cloud-only", "--user", "alice"}, 1, "vehicle-sim app login"},
		{"local and cloud only", []string{"send", vin, "unlock", "--local", "--cloud-only"}, 2, "exclude each other"},
		{"bad cloud timeout", []string{"send", vin, "unlock", "--cloud-timeout", "0s"}, 2, "must be positive"},
		{"bad user", []string{"send", vin, "unlock", "--local", "--user", "Alice!"}, 2, "not a user name"},
		{"no key", []string{"send", vin, "unlock", "--local", "--user", "alice"}, 1, "this phone has no key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := p.run(tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.errs) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errs, tc.code, tc.errs)
			}
		})
	}
	// A phone without a key is told how to get one.
	_, _, errs := p.run("send", vin, "unlock", "--local", "--user", "alice")
	if !strings.Contains(errs, "vehicle-sim app key create") || !strings.Contains(errs, "vehicle-sim app key pair VIN") {
		t.Fatalf("no-key message: %s", errs)
	}
	// A key file others can read is refused.
	p.createKey()
	if err := os.Chmod(p.keyPath(), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := p.run("send", vin, "unlock", "--local", "--user", "alice"); code != 1 || !strings.Contains(errs, "chmod 600") {
		t.Fatalf("exposed key: %d %s", code, errs)
	}
	// --user must match the session's user.
	p.login("http://127.0.0.1:1", "tcp://127.0.0.1:1")
	if code, _, errs := p.run("send", vin, "unlock", "--local", "--user", "bob"); code != 2 || !strings.Contains(errs, "alice's") {
		t.Fatalf("user mismatch: %d %s", code, errs)
	}
}

func TestSendLocal(t *testing.T) {
	t.Parallel()
	p := newPhone(t)
	key := p.createKey()
	link := phonetest.NewLink(t)
	p.vars["SIM_APP_GATEWAY_KEY"] = link.GatewayKey() // what a login would have taught the phone
	link.AddCar(vin, phonetest.KeyFor(key, "alice", protocol.RoleValet))

	// No session and no gateway key: the phone cannot tell the car from an impostor, and sends
	// nothing signed.
	delete(p.vars, "SIM_APP_GATEWAY_KEY")
	code, _, errs := p.run("send", vin, "lock", "--local", "--link", link.Addr(), "--user", "alice")
	if code != 1 || !strings.Contains(errs, "unauthenticated") || !strings.Contains(errs, "--gateway-key") || len(link.Commands()) != 0 {
		t.Fatalf("without a gateway key: exit %d, stderr %s, commands %d", code, errs, len(link.Commands()))
	}
	// No session: --user, the key and the gateway's public key are all the local link needs.
	p.vars["SIM_APP_GATEWAY_KEY"] = link.GatewayKey()
	code, out, errs := p.run("send", vin, "lock", "--local", "--link", link.Addr(), "--user", "alice")
	if code != 0 || !strings.HasPrefix(out, "path: local\n") || !strings.Contains(out, "lock executed (locked=true)") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out, errs)
	}
	// SIM_LINK names the link; a refusal is exit 1 with the car's reason.
	p.vars["SIM_LINK"] = link.Addr()
	code, out, _ = p.run("send", vin, "open_trunk", "--local", "--user", "alice")
	if code != 1 || !strings.Contains(out, "open_trunk rejected: forbidden") {
		t.Fatalf("exit %d, stdout %s", code, out)
	}
	// --json: one object per reply, with its path.
	code, out, _ = p.run("send", vin, "unlock", "--local", "--user", "alice", "--json")
	var r struct {
		protocol.Reply
		Path string `json:"path"`
	}
	if err := json.Unmarshal([]byte(out), &r); code != 0 || err != nil || r.Path != "local" || r.Status != "executed" || r.VIN != vin {
		t.Fatalf("exit %d, stdout %s (%v)", code, out, err)
	}
	// An unknown car: the link has no such car.
	code, _, errs = p.run("send", "WVWZZZ1JZXW000009", "unlock", "--local", "--user", "alice")
	if code != 1 || !strings.Contains(errs, "vehicle_unknown") || !strings.Contains(errs, "are you next to it") {
		t.Fatalf("exit %d, stderr %s", code, errs)
	}
	// Nothing on the link's address: the phone is not near the car.
	code, _, errs = p.run("send", vin, "unlock", "--local", "--user", "alice", "--link", testutil.FreeAddr(t))
	if code != 1 || !strings.Contains(errs, "car unreachable") || !strings.Contains(errs, "are you next to the car") {
		t.Fatalf("exit %d, stderr %s", code, errs)
	}
	assertNoSecret(t, key, link.Bodies())
}

// testBroker is a real mochi broker on loopback that admits anyone (tests only). With
// executes set it plays a gateway that executes every command.
func testBroker(t *testing.T, executes bool) string {
	t.Helper()
	srv := testutil.StartMochi(t, testutil.MochiOptions{Hooks: []mqtt.Hook{new(auth.AllowHook)}})
	if executes {
		type job struct {
			topic string
			cmd   protocol.Command
		}
		jobs := make(chan job, 16)
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // publishes the replies: owned by the test, stopped in cleanup
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				case j := <-jobs:
					for _, st := range []string{protocol.ReplyAccepted, protocol.ReplyExecuted} {
						b, _ := json.Marshal(protocol.Reply{V: 1, ID: j.cmd.ID, Status: st, VIN: j.cmd.VIN, Action: j.cmd.Action})
						_ = srv.Publish(j.topic, b, false, 1)
					}
				}
			}
		}()
		t.Cleanup(func() { close(done); wg.Wait() })
		_ = srv.Subscribe("app/+/cmd", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
			var ar protocol.AppRequest
			_ = json.Unmarshal(pk.Payload, &ar)
			doc, _ := ar.Command.DocBytes()
			var cmd protocol.Command
			_ = json.Unmarshal(doc, &cmd)
			user, _, _ := protocol.ParseAppTopic(pk.TopicName)
			select {
			case jobs <- job{protocol.AppTopic(user, protocol.SuffixReply), cmd}:
			case <-done:
			}
		})
	}
	return srv.URL()
}

func TestSendCloudFirst(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		broker func(t *testing.T) string
		first  string // the path line
		link   int    // requests the local link gets
	}{
		{"cloud answers", func(t *testing.T) string { return testBroker(t, true) }, "path: cloud\n", 0},
		{"cloud silent", func(t *testing.T) string { return testBroker(t, false) }, "path: local (cloud did not answer within 200ms)\n", 2},
		{"broker down", func(t *testing.T) string { return "tcp://" + testutil.FreeAddr(t) }, "path: local (broker unreachable within 200ms)\n", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPhone(t)
			p.login("http://127.0.0.1:1", tc.broker(t))
			key := p.createKey()
			link := phonetest.NewLink(t)
			p.vars["SIM_APP_GATEWAY_KEY"] = link.GatewayKey() // what a login would have taught the phone
			link.AddCar(vin, phonetest.KeyFor(key, "alice", protocol.RoleOwner))
			code, out, errs := p.run("send", vin, "unlock", "--cloud-timeout", "200ms", "--link", link.Addr())
			if code != 0 || !strings.HasPrefix(out, tc.first) || !strings.Contains(out, "unlock executed") {
				t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out, errs)
			}
			if n := link.Requests(); n != tc.link {
				t.Fatalf("local link got %d requests, want %d", n, tc.link)
			}
		})
	}
	t.Run("cloud only, json", func(t *testing.T) {
		p := newPhone(t)
		p.login("http://127.0.0.1:1", testBroker(t, true))
		p.createKey()
		code, out, errs := p.run("send", vin, "lock", "--cloud-only", "--json")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != 0 || len(lines) != 2 {
			t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out, errs)
		}
		for _, l := range lines {
			var r map[string]any
			if err := json.Unmarshal([]byte(l), &r); err != nil || r["path"] != "cloud" || r["fallback"] != nil {
				t.Fatalf("line %s: %v", l, err)
			}
		}
	})
	t.Run("cloud only, broker down", func(t *testing.T) {
		p := newPhone(t)
		p.login("http://127.0.0.1:1", "tcp://"+testutil.FreeAddr(t))
		p.createKey()
		code, _, errs := p.run("send", vin, "lock", "--cloud-only", "--cloud-timeout", "200ms")
		if code != 1 || !strings.Contains(errs, "broker unreachable") {
			t.Fatalf("exit %d, stderr %s", code, errs)
		}
	})
}
