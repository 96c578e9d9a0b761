package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/mqttc"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

var cheap = accounts.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}

const password = "correct horse battery"

type env struct {
	t     *testing.T
	dir   string
	cfg   server.Config
	g     *server.Gateway
	creds []protocol.Credentials
}

// startGateway runs a gateway with its embedded broker (gateway/harness) with its data in dir,
// cheap password hashes, a short result grace and 2FA off; mutate adjusts the configuration.
func startGateway(t testing.TB, dir string, mutate func(*server.Config)) *server.Gateway {
	t.Helper()
	c := harness.MustStart(t, harness.Options{Dir: dir, PasswordParams: &cheap, Configure: func(cfg *server.Config) {
		cfg.Commands.ResultGrace = 200 * time.Millisecond
		// 2FA is the subject of its own tests; here key changes need no code.
		cfg.TwoFA.Mode = twofa.ModeOff
		if mutate != nil {
			mutate(cfg)
		}
	}})
	return c.G
}

// adminClient is a client of g's API with the admin token.
func adminClient(g *server.Gateway) *api.Client { return api.NewClient(g.HTTPURL(), g.AdminToken()) }

// admin makes a raw admin call, for tests of the wire itself; the others use adminClient's
// typed methods.
func admin(t testing.TB, g *server.Gateway, method, path string, in, out any) {
	t.Helper()
	if err := adminClient(g).Do(context.Background(), method, path, in, out); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
}

func provision(t testing.TB, g *server.Gateway, n int) []protocol.Credentials {
	t.Helper()
	creds, err := adminClient(g).AddVehicles(context.Background(), api.AddVehiclesRequest{Count: n})
	if err != nil {
		t.Fatalf("provision %d cars: %v", n, err)
	}
	return creds
}

func addUser(t testing.TB, g *server.Gateway, name string, vin string, role protocol.Role) {
	t.Helper()
	if err := adminClient(g).AddUser(context.Background(), name, password); err != nil {
		t.Fatalf("add user %s: %v", name, err)
	}
	if vin != "" {
		assign(t, g, vin, name, role)
	}
}

// reissue gives car vin new credentials.
func reissue(t testing.TB, g *server.Gateway, vin string) protocol.Credentials {
	t.Helper()
	fresh, err := adminClient(g).ReissueCredentials(context.Background(), vin)
	if err != nil {
		t.Fatalf("reissue the credentials of %s: %v", vin, err)
	}
	return fresh
}

// whitelistOf is the admin's view of car vin's whitelist (zero before it has one).
func whitelistOf(t testing.TB, g *server.Gateway, vin string) api.KeyStatus {
	t.Helper()
	v, err := adminClient(g).Vehicle(context.Background(), vin)
	if err != nil {
		t.Fatalf("vehicle %s: %v", vin, err)
	}
	if v.Keys == nil {
		return api.KeyStatus{}
	}
	return *v.Keys
}

// assign gives user role on vin.
func assign(t testing.TB, g *server.Gateway, vin, user string, role protocol.Role) {
	t.Helper()
	if _, err := adminClient(g).Assign(context.Background(), vin, user, role); err != nil {
		t.Fatalf("make %s %s of %s: %v", user, role, vin, err)
	}
}

// standaloneBroker starts the standalone broker on a free loopback port, trusting the signing
// key of the gateway whose data dir is dir (made now when the gateway has not run yet), until
// the test ends, and returns its URL.
func standaloneBroker(t testing.TB, dir string) string {
	t.Helper()
	return "tcp://" + harness.MustStartBroker(t, dir).MQTTAddr()
}

// runFleet runs cars, reporting telemetry every 200 ms, until the test ends.
func runFleet(t testing.TB, brokerURL string, creds []protocol.Credentials) {
	t.Helper()
	harness.MustStartFleet(t, harness.FleetOptions{BrokerURL: brokerURL, Creds: creds, TelemetryInterval: 200 * time.Millisecond})
}

func waitOnline(t testing.TB, g *server.Gateway, vins ...string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, v := range vins {
			if tw, ok := g.Router().Twin(v); !ok || tw.Status != protocol.StatusOnline {
				return fmt.Errorf("%s not online", v)
			}
		}
		return nil
	})
}

// login logs user in with a new phone key, connects, and pairs the key with each of vins.
func login(t testing.TB, g *server.Gateway, user, brokerURL string, vins ...string) *phone.App {
	t.Helper()
	app, _, _ := loginKey(t, g, user, brokerURL, vins...)
	return app
}

func loginKey(t testing.TB, g *server.Gateway, user, brokerURL string, vins ...string) (*phone.App, *phone.Session, *sign.Signer) {
	t.Helper()
	sess, err := phone.Login(context.Background(), g.HTTPURL(), user, password, "")
	if err != nil {
		t.Fatal(err)
	}
	key, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	for _, vin := range vins {
		if _, err := phone.PairKey(context.Background(), sess, key, vin, "test phone", ""); err != nil {
			t.Fatalf("pair %s's key with %s: %v", user, vin, err)
		}
	}
	app, err := phone.ConnectWith(context.Background(), sess, phone.ConnectOptions{BrokerURL: brokerURL, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	return app, sess, key
}

// waitSynced waits until each car acknowledged its current whitelist.
func waitSynced(t testing.TB, g *server.Gateway, vins ...string) {
	t.Helper()
	admin := adminClient(g)
	testutil.Eventually(t, 10*time.Second, func() error { return harness.Synced(context.Background(), admin, vins...) })
}

// replyLog is a second session of a user that records every reply, to prove that each request
// gets exactly one terminal reply.
type replyLog struct {
	mu      sync.Mutex
	replies map[string][]protocol.Reply
}

func watchReplies(t *testing.T, g *server.Gateway, user string) *replyLog {
	t.Helper()
	sess, err := phone.Login(context.Background(), g.HTTPURL(), user, password, "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := mqttc.Dial(context.Background(), mqttc.Options{BrokerURL: sess.BrokerURL, ClientID: user + "-watch",
		Username: user, Password: sess.Token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l := &replyLog{replies: map[string][]protocol.Reply{}}
	err = c.Subscribe(context.Background(), protocol.AppTopic(user, protocol.SuffixReply), 1, func(m mqttc.Message) {
		var r protocol.Reply
		if json.Unmarshal(m.Payload, &r) == nil {
			l.mu.Lock()
			l.replies[r.ID] = append(l.replies[r.ID], r)
			l.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *replyLog) terminalCount(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.replies[id] {
		if protocol.Terminal(r.Status) {
			n++
		}
	}
	return n
}

func send(t *testing.T, app *phone.App, vin string, action protocol.Action) protocol.Reply {
	t.Helper()
	r, err := app.Send(context.Background(), phone.Request{VIN: vin, Action: action}, nil)
	if err != nil {
		t.Fatalf("send %s to %s: %v", action, vin, err)
	}
	return r
}

func expect(t *testing.T, r protocol.Reply, status string, reason protocol.Reason) {
	t.Helper()
	if r.Status != status || r.Reason != reason {
		t.Fatalf("reply %s/%s, want %s/%s", r.Status, r.Reason, status, reason)
	}
}

func TestEndToEndCommands(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), nil)
	creds := provision(t, g, 4)
	mine, valetCar, offline := creds[0].VIN, creds[1].VIN, creds[2].VIN
	silent := creds[3]
	addUser(t, g, "alice", mine, protocol.RoleOwner)
	assign(t, g, valetCar, "alice", protocol.RoleValet)
	assign(t, g, offline, "alice", protocol.RoleOwner)
	assign(t, g, silent.VIN, "alice", protocol.RoleOwner)
	addUser(t, g, "bob", "", "")

	runFleet(t, g.BrokerURL(), creds[:2])
	// A car that comes online but never answers: its commands must end "expired".
	sc, err := mqttc.Dial(context.Background(), mqttc.Options{BrokerURL: g.BrokerURL(), ClientID: silent.ClientID,
		Username: silent.Username, Password: silent.Token})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	online, _ := json.Marshal(protocol.VehicleStatus{V: 1, Status: protocol.StatusOnline, TsMs: time.Now().UnixMilli()})
	if err := sc.Publish(context.Background(), protocol.VehicleTopic(silent.VIN, protocol.SuffixStatus), 1, true, online); err != nil {
		t.Fatal(err)
	}
	waitOnline(t, g, mine, valetCar, silent.VIN)

	alice, _, aliceKey := loginKey(t, g, "alice", "", mine, valetCar, offline, silent.VIN)
	bob := login(t, g, "bob", "")
	waitSynced(t, g, mine, valetCar)
	watch := watchReplies(t, g, "alice")

	t.Run("unlock and lock round trip", func(t *testing.T) {
		r := send(t, alice, mine, protocol.ActionUnlock)
		expect(t, r, protocol.ReplyExecuted, "")
		if locked, _ := r.State[protocol.VSSIsLocked].(bool); locked {
			t.Fatalf("car still locked after unlock: %v", r.State)
		}
		r = send(t, alice, mine, protocol.ActionLock)
		expect(t, r, protocol.ReplyExecuted, "")
		if locked, _ := r.State[protocol.VSSIsLocked].(bool); !locked {
			t.Fatalf("car not locked after lock: %v", r.State)
		}
	})
	t.Run("offline car answered at once", func(t *testing.T) {
		expect(t, send(t, alice, offline, protocol.ActionUnlock), protocol.ReplyRejected, protocol.ReasonVehicleOffline)
	})
	t.Run("unknown car", func(t *testing.T) {
		expect(t, send(t, alice, "1HGCM82633A004352", protocol.ActionUnlock), protocol.ReplyRejected, protocol.ReasonVehicleUnknown)
	})
	t.Run("stranger refused: his key is not on the car's whitelist", func(t *testing.T) {
		expect(t, send(t, bob, mine, protocol.ActionUnlock), protocol.ReplyRejected, protocol.ReasonKeyUnknown)
	})
	t.Run("valet may unlock but not open the trunk", func(t *testing.T) {
		expect(t, send(t, alice, valetCar, protocol.ActionUnlock), protocol.ReplyExecuted, "")
		expect(t, send(t, alice, valetCar, protocol.ActionOpenTrunk), protocol.ReplyRejected, protocol.ReasonForbidden)
	})
	t.Run("silent car: expired, never executed late", func(t *testing.T) {
		r, err := alice.Send(context.Background(), phone.Request{VIN: silent.VIN, Action: protocol.ActionHonk, Lifetime: 500 * time.Millisecond}, nil)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, r, protocol.ReplyExpired, protocol.ReasonExpired)
	})
	t.Run("duplicate id", func(t *testing.T) {
		cmd, env, err := phone.SignCommand(aliceKey, alice.NewCommand(phone.Request{VIN: mine, Action: protocol.ActionFlash}))
		if err != nil {
			t.Fatal(err)
		}
		payload, _ := json.Marshal(protocol.AppRequest{V: 1, Command: env})
		exp := time.UnixMilli(cmd.ExpiresAtMs)
		r, err := alice.SendRaw(context.Background(), cmd.ID, exp, payload, nil)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, r, protocol.ReplyExecuted, "")
		_ = env
		r, err = alice.SendRaw(context.Background(), cmd.ID, exp, payload, nil)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, r, protocol.ReplyRejected, protocol.ReasonDuplicate)
	})
	t.Run("unsigned command", func(t *testing.T) {
		cmd := alice.NewCommand(phone.Request{VIN: mine, Action: protocol.ActionLock})
		doc, _ := json.Marshal(cmd)
		payload, _ := json.Marshal(protocol.AppRequest{V: 1, Command: protocol.Envelope{Doc: protocol.EncodeB64(doc)}})
		r, err := alice.SendRaw(context.Background(), cmd.ID, time.UnixMilli(cmd.ExpiresAtMs), payload, nil)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, r, protocol.ReplyRejected, protocol.ReasonSignatureInvalid)
	})
	t.Run("bad requests", func(t *testing.T) {
		mk := func(mutate func(*protocol.Command)) []byte {
			cmd := alice.NewCommand(phone.Request{VIN: mine, Action: protocol.ActionLock})
			mutate(&cmd)
			doc, _ := json.Marshal(cmd)
			p, _ := json.Marshal(protocol.AppRequest{V: 1, Command: protocol.Envelope{Doc: protocol.EncodeB64(doc)}})
			return p
		}
		cases := map[string][]byte{
			"unknown action": mk(func(c *protocol.Command) { c.Action = "self_destruct" }),
			"bad vin":        mk(func(c *protocol.Command) { c.VIN = "NOT-A-VIN" }),
			"too far ahead":  mk(func(c *protocol.Command) { c.ExpiresAtMs = c.IssuedAtMs + 120_000 }),
			"doc not base64": []byte(`{"v":1,"command":{"doc":"%%%"}}`),
		}
		for name, p := range cases {
			var probe protocol.AppRequest
			json.Unmarshal(p, &probe)
			doc, _ := probe.Command.DocBytes()
			var c protocol.Command
			json.Unmarshal(doc, &c)
			id := c.ID
			if id == "" {
				continue
			}
			r, err := alice.SendRaw(context.Background(), id, time.Now().Add(2*time.Second), p, nil)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			expect(t, r, protocol.ReplyRejected, protocol.ReasonBadRequest)
		}
		// Payloads without a usable id are answered bad_request with an empty id.
		before := watch.terminalCount("")
		for _, p := range [][]byte{[]byte("{not json"), []byte(`{"v":1,"command":{"doc":"%%%"}}`), []byte(strings.Repeat("x", protocol.MaxPayloadBytes+10))} {
			if err := alice.PublishRaw(context.Background(), p); err != nil {
				t.Fatal(err)
			}
		}
		testutil.Eventually(t, 5*time.Second, func() error {
			if got := watch.terminalCount(""); got != before+3 {
				return fmt.Errorf("%d bad_request replies without id, want %d", got-before, 3)
			}
			return nil
		})
		watch.mu.Lock()
		for _, r := range watch.replies[""] {
			if r.Status != protocol.ReplyRejected || r.Reason != protocol.ReasonBadRequest {
				t.Errorf("reply to an unparseable request: %+v", r)
			}
		}
		watch.mu.Unlock()
	})
	t.Run("exactly one terminal reply per request", func(t *testing.T) {
		testutil.Eventually(t, 5*time.Second, func() error {
			watch.mu.Lock()
			defer watch.mu.Unlock()
			if len(watch.replies) < 8 {
				return fmt.Errorf("watch saw %d request ids", len(watch.replies))
			}
			return nil
		})
		watch.mu.Lock()
		ids := make([]string, 0, len(watch.replies))
		for id := range watch.replies {
			if id != "" {
				ids = append(ids, id)
			}
		}
		watch.mu.Unlock()
		for _, id := range ids {
			if n := watch.terminalCount(id); n != 1 {
				// the duplicate's second request shares the id and gets its own terminal reply
				if n == 2 && strings.Contains(fmt.Sprint(watch.replies[id]), protocol.ReplyExecuted) && strings.Contains(fmt.Sprint(watch.replies[id]), string(protocol.ReasonDuplicate)) {
					continue
				}
				t.Errorf("request %s got %d terminal replies: %v", id, n, watch.replies[id])
			}
		}
	})
}

func auditFilterUser(u string) audit.Filter { return audit.Filter{User: u, Limit: 1000} }

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
