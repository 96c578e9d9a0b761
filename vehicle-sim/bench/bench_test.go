package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/gateway/accounts"
	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/pkg/protocol"
)

// TestMain lets a test start real load processes: the test binary, re-executed with
// BENCH_LOAD_PROCESS=1, is `vehicle-sim bench worker`.
func TestMain(m *testing.M) {
	if os.Getenv("BENCH_LOAD_PROCESS") == "1" {
		if err := RunWorker(context.Background(), os.Stdin, os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestParseFlags(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		check   func(Config) bool
		wantErr string
	}{
		{"connect defaults", []string{"connect"}, func(c Config) bool {
			return c.Cars == 1000 && c.Steps == 2 && c.Rate == 0 && c.Duration == 0 && c.ConnectRate == 2000 && c.Broker == ModeEmbedded
		}, ""},
		{"telemetry defaults", []string{"telemetry"}, func(c Config) bool {
			return c.Cars == 100 && c.Steps == 1 && c.Rate < 0 && c.Duration == 10*time.Second && c.QoS == 0
		}, ""},
		{"telemetry at a rate", []string{"telemetry", "--rate", "10", "--qos", "1", "--cars", "5"}, func(c Config) bool {
			return c.Rate == 10 && c.QoS == 1 && c.Cars == 5
		}, ""},
		{"connect with telemetry every 10 s", []string{"connect", "--rate", "0.1", "--duration", "30s"}, func(c Config) bool {
			return c.Rate == 0.1 && c.Duration == 30*time.Second
		}, ""},
		{"target", []string{"connect", "--broker", "tcp://127.0.0.1:1883", "--gateway", "http://127.0.0.1:8080"}, nil, ""},
		{"gateway env", []string{"connect", "--gateway-env", "GATEWAY_BROKER_MAX_CLIENT_WRITES_PENDING=128"}, func(c Config) bool {
			return len(c.GatewayEnv) == 1
		}, ""},
		{"unknown scenario", []string{"unlock"}, nil, "unknown scenario"},
		{"commands defaults", []string{"commands"}, func(c Config) bool {
			return c.Cars == 100 && c.Rate == 100 && c.Duration == 10*time.Second && c.SetupConcurrency == 16 && len(c.Actions) == 0 && c.Owners == 0
		}, ""},
		{"commands over fewer owners", []string{"commands", "--cars", "10000", "--owners", "100", "--rate", "1000"}, func(c Config) bool {
			return c.Cars == 10000 && c.Owners == 100 && c.Rate == 1000
		}, ""},
		{"local over fewer owners", []string{"local", "--cars", "6", "--owners", "2"}, func(c Config) bool { return c.Owners == 2 }, ""},
		{"as many owners as cars", []string{"commands", "--cars", "6", "--owners", "6"}, func(c Config) bool { return c.Owners == 6 }, ""},
		{"negative owners", []string{"commands", "--owners", "-1"}, nil, "--owners: -1 must not be negative"},
		{"more owners than cars", []string{"commands", "--cars", "6", "--owners", "7"}, nil, "want at most --cars"},
		{"owners for revoke", []string{"revoke", "--owners", "2"}, nil, "--owners: only for the commands and local"},
		{"owners not a number", []string{"commands", "--owners", "many"}, nil, "-owners"},
		{"commands at a rate", []string{"commands", "--cars", "1000", "--rate", "1000", "--duration", "30s", "--actions", "lock,flash"}, func(c Config) bool {
			return c.Cars == 1000 && c.Rate == 1000 && c.Duration == 30*time.Second && len(c.Actions) == 2 && c.Actions[1] == "flash"
		}, ""},
		{"revoke defaults", []string{"revoke"}, func(c Config) bool { return c.Cars == 100 && c.Concurrency == 32 }, ""},
		{"local defaults", []string{"local"}, func(c Config) bool { return c.Cars == 100 && c.Rate == 200 }, ""},
		{"commands beyond the step-up", []string{"commands", "--duration", "10m"}, nil, "step-up"},
		{"commands at max", []string{"commands", "--rate", "max"}, nil, "--rate"},
		{"unknown action", []string{"local", "--actions", "unlock,fly"}, nil, "--actions"},
		{"no scenario", nil, nil, "name a scenario"},
		{"bad qos", []string{"telemetry", "--qos", "2"}, nil, "--qos"},
		{"bad rate", []string{"telemetry", "--rate", "fast"}, nil, "rate"},
		{"bad broker", []string{"connect", "--broker", "rabbit"}, nil, "--broker"},
		{"compare with a target", []string{"connect", "--compare", "--broker", "tcp://127.0.0.1:1"}, nil, "--compare"},
		{"several problems at once", []string{"connect", "--cars", "-1", "--rounds", "0"}, nil, "--rounds"},
		{"connect over TLS", []string{"connect", "--tls", "--compare"}, func(c Config) bool { return c.TLS && c.Compare }, ""},
		{"TLS for commands", []string{"commands", "--tls"}, nil, "--tls"},
		{"TLS with a target", []string{"connect", "--tls", "--broker", "tcp://127.0.0.1:1"}, nil, "--tls"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseFlags(c.args, io.Discard)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one mentioning %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.check != nil && !c.check(cfg) {
				t.Fatalf("config %+v", cfg)
			}
		})
	}
}

// The bytes a bench car publishes are a protocol.Telemetry in an MQTT PUBLISH.
func TestTelemetryWire(t *testing.T) {
	payload := appendTelemetry(nil, 1_700_000_000_123, 42)
	var tel protocol.Telemetry
	if err := protocol.Decode(payload, &tel); err != nil {
		t.Fatal(err)
	}
	if tel.V != 1 || tel.TsMs != 1_700_000_000_123 || tel.Seq != 42 || len(tel.Signals) != 10 || tel.Signals[protocol.VSSSpeed] != 4.2 {
		t.Fatalf("decoded %+v", tel)
	}
	topic := protocol.VehicleTopic("WVWZZZ1JZXW000001", protocol.SuffixTelemetry)
	for _, qos := range []byte{0, 1} {
		raw := appendPublish(nil, topic, qos, false, 77, payload)
		r := bufio.NewReader(bytes.NewReader(raw))
		fh := packets.FixedHeader{}
		first, _ := r.ReadByte()
		if err := fh.Decode(first); err != nil {
			t.Fatal(err)
		}
		n, _, err := packets.DecodeLength(r)
		if err != nil {
			t.Fatal(err)
		}
		fh.Remaining = n
		pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 4}
		body, _ := io.ReadAll(r)
		if err := pk.PublishDecode(body); err != nil {
			t.Fatal(err)
		}
		if pk.TopicName != topic || !bytes.Equal(pk.Payload, payload) || pk.FixedHeader.Qos != qos || (qos == 1 && pk.PacketID != 77) {
			t.Fatalf("qos %d: decoded %+v", qos, pk)
		}
	}
}

// A password file line is what mosquitto_passwd writes: PBKDF2-SHA512, 101 rounds.
func TestPasswdLine(t *testing.T) {
	line, err := passwdLine("WVWZZZ1JZXW000001", "the-token")
	if err != nil {
		t.Fatal(err)
	}
	user, rest, _ := strings.Cut(line, ":")
	parts := strings.Split(rest, "$")
	if user != "WVWZZZ1JZXW000001" || len(parts) != 5 || parts[1] != "7" || parts[2] != "101" {
		t.Fatalf("line %q", line)
	}
	salt, _ := base64.StdEncoding.DecodeString(parts[3])
	want, _ := pbkdf2.Key(sha512.New, "the-token", salt, 101, 64)
	if got, _ := base64.StdEncoding.DecodeString(parts[4]); !bytes.Equal(got, want) || len(salt) != 12 {
		t.Fatalf("hash does not verify: %q", line)
	}
}

// startTarget runs a gateway in this process, for the bench to target.
func startTarget(t *testing.T) (*server.Gateway, string) {
	t.Helper()
	c := harness.MustStart(t, harness.Options{Configure: func(cfg *server.Config) { cfg.TwoFA.Mode = twofa.ModeOff }})
	return c.G, filepath.Join(c.Dir, server.AdminTokenFile)
}

func targetConfig(t *testing.T, g *server.Gateway, tokenFile string, args ...string) Config {
	t.Helper()
	args = append(args, "--broker", g.BrokerURL(), "--gateway", g.HTTPURL(), "--token-file", tokenFile,
		"--gateway-pid", "0", "--settle", "50ms")
	cfg, err := ParseFlags(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// This process is the gateway and the broker: measure it.
	cfg.GatewayPID, cfg.BrokerPID = os.Getpid(), os.Getpid()
	return cfg
}

// testEnv starts load processes as this test binary (see TestMain).
func testEnv(t *testing.T) Env {
	return Env{Stdout: io.Discard, Stderr: testWriter{t}, LoadProcess: func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "BENCH_LOAD_PROCESS=1")
		return cmd
	}}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// The scenarios against a gateway in this process, at tiny sizes: the figures are not checked
// (no timing assertions), only that every car connected and nothing was lost.
func TestScenariosAgainstTarget(t *testing.T) {
	g, tokenFile := startTarget(t)
	cases := []struct {
		name string
		args []string
	}{
		{"connect in this process", []string{"connect", "--cars", "6", "--steps", "2"}},
		{"connect over two load processes and source addresses", []string{"connect", "--cars", "6", "--procs", "2", "--source-addrs", "2", "--rate", "5", "--duration", "500ms"}},
		{"telemetry qos 0", []string{"telemetry", "--cars", "5", "--duration", "500ms"}},
		{"telemetry qos 1 at a rate", []string{"telemetry", "--cars", "5", "--duration", "1s", "--qos", "1", "--rate", "50", "--inflight", "4"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := targetConfig(t, g, tokenFile, c.args...)
			results, err := Execute(context.Background(), cfg, testEnv(t))
			if err != nil {
				t.Fatal(err)
			}
			if len(results) != 1 {
				t.Fatalf("%d results", len(results))
			}
			r := results[0]
			if r.Connected != int64(cfg.Cars) || r.Errors != 0 || r.Lost != 0 || r.GatewayLost != 0 {
				t.Fatalf("result %+v", r)
			}
			if cfg.Rate != 0 && (r.Sent == 0 || r.Received < r.Sent) {
				t.Fatalf("sent %d, the twin received %d", r.Sent, r.Received)
			}
			if cfg.QoS == 1 && r.Acked != r.Sent {
				t.Fatalf("sent %d, acknowledged %d", r.Sent, r.Acked)
			}
			if len(r.Processes) != 1 || r.BrokerKBPerCar == nil || r.P99Ms == nil && (cfg.Scenario == ScenarioConnect || cfg.QoS == 1) {
				t.Fatalf("measurements missing: %+v", r)
			}
			// The table and the JSON both render.
			var table, js bytes.Buffer
			printTable(&table, cfg, results)
			if !strings.Contains(table.String(), "connected") {
				t.Fatalf("table:\n%s", table.String())
			}
			if err := json.NewEncoder(&js).Encode(results[0]); err != nil {
				t.Fatal(err)
			}
			var obj map[string]any
			_ = json.Unmarshal(js.Bytes(), &obj)
			for _, k := range []string{"scenario", "cars", "duration_s", "connected", "connect_per_s", "msgs_per_s", "received_after_window", "lost", "errors"} {
				if _, ok := obj[k]; !ok {
					t.Fatalf("JSON lacks %q: %s", k, js.String())
				}
			}
		})
	}
}

// The modes that start the system under test, at tiny sizes: the gateway (and the standalone
// broker) are built once and run as processes; mosquitto if it is installed.
func TestSpawnedModes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the gateway and the broker; skipped with -short")
	}
	root, err := findModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	cfg, err := ParseFlags([]string{"telemetry", "--cars", "5", "--duration", "500ms", "--qos", "1", "--settle", "50ms", "--src", root}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	modes := []string{ModeEmbedded, ModeStandalone}
	if _, err := os.Stat(cfg.MosquittoBin); err == nil {
		modes = append(modes, ModeMosquitto)
	} else {
		t.Logf("no %s: mosquitto mode not tested (apt-get install mosquitto)", cfg.MosquittoBin)
	}
	bins, err := buildBinaries(context.Background(), cfg, bin, []string{ModeStandalone}, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	cfg.GatewayBin, cfg.BrokerBin = bins.gateway, bins.broker
	// Each mode also over TLS: the cars verify the broker's certificate (--tls).
	all := slices.Clone(modes)
	for _, m := range modes {
		all = append(all, m+tlsSuffix)
	}
	for _, mode := range all {
		t.Run(mode, func(t *testing.T) {
			cfg := cfg
			cfg.Broker, cfg.TLS = strings.CutSuffix(mode, tlsSuffix)
			results, err := Execute(context.Background(), cfg, testEnv(t))
			if err != nil {
				t.Fatal(err)
			}
			r := results[0]
			if r.Connected != 5 || r.Errors != 0 || r.Sent == 0 || r.Acked != r.Sent || r.Received+r.Lost != r.Acked {
				t.Fatalf("result %+v", r)
			}
			// Through a network broker the gateway is a subscriber with a write queue, and mochi
			// drops from a full one (docs/ARCHITECTURE.md, "The broker holds nothing that matters"):
			// a loss there is a finding, not a bench failure.
			if r.Lost != 0 {
				t.Logf("%s: %d of %d acknowledged messages did not reach the twin", mode, r.Lost, r.Acked)
			}
			if r.Broker != mode {
				t.Fatalf("result of mode %s, want %s", r.Broker, mode)
			}
			wantProcs := 2
			if cfg.Broker == ModeEmbedded {
				wantProcs = 1
			}
			if len(r.Processes) != wantProcs {
				t.Fatalf("measured %d processes, want %d", len(r.Processes), wantProcs)
			}
		})
	}
	// Commands through mosquitto: the apps' tokens in its password file, their topics in its
	// ACL, and the gateway started as the digital-key scenarios start it (TOTP enrolled, no
	// per-user rate limit).
	if _, err := os.Stat(cfg.MosquittoBin); err == nil {
		t.Run("commands through mosquitto", func(t *testing.T) {
			kcfg, err := ParseFlags([]string{"commands", "--cars", "2", "--rate", "20", "--duration", "300ms", "--broker", ModeMosquitto, "--src", root}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			kcfg.GatewayBin = bins.gateway
			results, err := Execute(context.Background(), kcfg, testEnv(t))
			if err != nil {
				t.Fatal(err)
			}
			r := results[0]
			if r.Errors != 0 || r.Executed == 0 || r.Executed != r.Commands || r.StepUps != 2 || len(r.Processes) != 2 {
				t.Fatalf("result %+v %+v", r, r.KeyResult)
			}
		})
	}
}

// startKeyTarget runs a gateway in this process as the digital-key scenarios expect it: TOTP
// for users who enrolled (the default), no per-user rate limit; cheap password hashing.
func startKeyTarget(t *testing.T) (*server.Gateway, string) {
	t.Helper()
	cheap := accounts.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}
	c := harness.MustStart(t, harness.Options{PasswordParams: &cheap, Configure: func(cfg *server.Config) {
		cfg.TwoFA.Mode = twofa.ModeEnrolled
		cfg.Commands.RatePerMinute = 0
	}})
	return c.G, filepath.Join(c.Dir, server.AdminTokenFile)
}

// The digital-key scenarios against a gateway in this process, with real cars and phones, at
// tiny sizes, side by side (their users and cars are their own): no figure is checked, only
// that everything the scenario did succeeded and was reported.
func TestKeyScenariosAgainstTarget(t *testing.T) {
	g, tokenFile := startKeyTarget(t)
	cases := []struct {
		name string
		args []string
		keys []string // JSON fields the scenario must report
	}{
		{"commands", []string{"commands", "--cars", "3", "--rate", "40", "--duration", "500ms"},
			[]string{"p90_ms", "p999_ms", "split", "executed", "accepted", "step_ups", "rate_target"}},
		{"revoke", []string{"revoke", "--cars", "3", "--concurrency", "2"},
			[]string{"p90_ms", "revoked", "cars_acked", "revoke_request_p99_ms"}},
		{"local", []string{"local", "--cars", "3", "--rate", "40", "--duration", "500ms"},
			[]string{"p90_ms", "p999_ms", "executed", "link_addr"}},
		// A fleet operator's accounts: 6 cars over 2 owners, each with one phone key paired
		// with its 3 cars and one app session with several commands in flight.
		{"commands over 2 owners", []string{"commands", "--cars", "6", "--owners", "2", "--rate", "60", "--duration", "500ms"},
			[]string{"p90_ms", "split", "executed", "accepted", "step_ups"}},
		{"local over 2 owners", []string{"local", "--cars", "6", "--owners", "2", "--rate", "60", "--duration", "500ms"},
			[]string{"p90_ms", "executed", "link_addr"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg := targetConfig(t, g, tokenFile, c.args...)
			results, err := Execute(context.Background(), cfg, testEnv(t))
			if err != nil {
				t.Fatal(err)
			}
			r := results[0]
			owners := cfg.Cars
			if cfg.Owners > 0 {
				owners = cfg.Owners
			}
			if r.Errors != 0 || r.KeyResult == nil || r.Owners != owners || r.Connected != int64(cfg.Cars) || r.P50Ms == nil {
				t.Fatalf("result %+v %+v", r, r.KeyResult)
			}
			switch cfg.Scenario {
			case ScenarioCommands:
				if r.Executed == 0 || r.Executed != r.Commands || r.Accepted != r.Commands || r.StepUps != owners || len(r.Split) != 4 {
					t.Fatalf("commands: %+v", r.KeyResult)
				}
			case ScenarioLocal:
				if r.Executed == 0 || r.Executed != r.Commands {
					t.Fatalf("local: %+v", r.KeyResult)
				}
			case ScenarioRevoke:
				if r.Revoked != cfg.Cars || r.AckedCars != cfg.Cars || r.DurationS <= 0 {
					t.Fatalf("revoke: %+v", r.KeyResult)
				}
			}
			var table, js bytes.Buffer
			printTable(&table, cfg, results)
			if !strings.Contains(table.String(), "p99.9 (ms)") || (cfg.Owners > 0) != strings.Contains(table.String(), " owners   ") {
				t.Fatalf("table:\n%s", table.String())
			}
			t.Logf("table:\n%s", table.String())
			if err := json.NewEncoder(&js).Encode(r); err != nil {
				t.Fatal(err)
			}
			var obj map[string]any
			_ = json.Unmarshal(js.Bytes(), &obj)
			for _, k := range append([]string{"scenario", "cars", "duration_s", "p50_ms", "p99_ms", "max_ms", "errors", "owners", "setup_s"}, c.keys...) {
				if _, ok := obj[k]; !ok {
					t.Fatalf("JSON lacks %q: %s", k, js.String())
				}
			}
		})
	}
}

// --owners M: owner j owns cars j, j+M, j+2M, …, and every car has exactly one owner.
func TestSpreadCars(t *testing.T) {
	carOwner, cars := spreadCars(7, 3)
	want := [][]int{{0, 3, 6}, {1, 4}, {2, 5}}
	if len(cars) != 3 {
		t.Fatalf("cars %v", cars)
	}
	for j := range want {
		if !slices.Equal(cars[j], want[j]) {
			t.Fatalf("owner %d owns %v, want %v", j, cars[j], want[j])
		}
		for _, i := range cars[j] {
			if carOwner[i] != j {
				t.Fatalf("car %d: owner %d, want %d", i, carOwner[i], j)
			}
		}
	}
	if carOwner, cars := spreadCars(4, 4); !slices.Equal(carOwner, []int{0, 1, 2, 3}) || len(cars[3]) != 1 {
		t.Fatalf("one owner per car: %v %v", carOwner, cars)
	}
}
