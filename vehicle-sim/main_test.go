package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
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
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/carstore"
)

// runMain runs the binary's dispatch with args and an environment that has no SIM_* set.
func runMain(ctx context.Context, args []string, vars map[string]string) (code int, stdout, stderr *testutil.Buffer) {
	return runMainOut(ctx, &testutil.Buffer{}, args, vars)
}

// runMainOut is runMain writing stdout where the test can read it while the command runs.
func runMainOut(ctx context.Context, stdout *testutil.Buffer, args []string, vars map[string]string) (code int, _, stderr *testutil.Buffer) {
	stderr = &testutil.Buffer{}
	var environ []string
	for k, v := range vars {
		environ = append(environ, k+"="+v)
	}
	env := stdio{Stdin: strings.NewReader(""), Stdout: stdout, Stderr: stderr, Getenv: func(k string) string { return vars[k] }, Environ: environ}
	return dispatch(ctx, args, env), stdout, stderr
}

func TestDispatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		code    int
		wantErr string
	}{
		{"no command", nil, 2, "usage: vehicle-sim COMMAND"},
		{"unknown", []string{"fly"}, 2, `unknown command "fly"`},
		{"app without command", []string{"app"}, 2, "usage: vehicle-sim app"},
		{"app send without session", []string{"app", "--session", "/nonexistent/s.json", "send", "1HGCM82633A004352", "unlock"}, 1, "vehicle-sim app login"},
		{"run without fleet", []string{"run"}, 2, "no fleet given"},
		{"run with both", []string{"run", "--fleet", "f.json", "--cars", "3"}, 2, "not both"},
		{"run bad flag value", []string{"run", "--cars", "lots"}, 2, "run.cars"},
		{"run link on every interface", []string{"run", "--cars", "1", "--link-addr", "0.0.0.0:1884"}, 2, "link_addr"},
		{"run unreadable fleet", []string{"run", "--fleet", "/nonexistent/fleet.json"}, 1, "read fleet file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runMain(context.Background(), tc.args, nil)
			if code != tc.code || !strings.Contains(stderr.String(), tc.wantErr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.wantErr)
			}
		})
	}
	if code, stdout, _ := runMain(context.Background(), []string{"help"}, nil); code != 0 || !strings.Contains(stdout.String(), "run ") {
		t.Fatalf("help: %d %q", code, stdout)
	}
}

// writeFleet writes a credentials file for n cars and returns its path.
func writeFleet(t *testing.T, dir string, vins ...string) string {
	t.Helper()
	s, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := sign.EncodePublic(s.Public())
	var creds []protocol.Credentials
	for _, v := range vins {
		creds = append(creds, protocol.Credentials{VIN: v, ClientID: v, Username: v, Token: "t", GatewayKey: pub})
	}
	b, _ := json.Marshal(creds)
	p := filepath.Join(dir, "fleet.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunDataDirLocked(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fleetFile := writeFleet(t, dir, "WVWZZZ1JZXW000001")
	st, err := carstore.Open(filepath.Join(dir, "data", carstore.File))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	code, _, stderr := runMain(context.Background(), []string{"run", "--fleet", fleetFile, "--data", filepath.Join(dir, "data")}, nil)
	if code != 1 || !strings.Contains(stderr.String(), "is in use by another vehicle-sim process") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// TestRunAgainstBroker runs `vehicle-sim run --fleet` against a real broker (admitting anyone:
// tests only), sees the cars come online and publish telemetry, and stops it like SIGINT does.
func TestRunAgainstBroker(t *testing.T) {
	t.Parallel()
	b := testutil.StartMochi(t, testutil.MochiOptions{Hooks: []mqtt.Hook{new(auth.AllowHook)}})
	srv := b.Server
	var mu sync.Mutex
	seen := map[string]int{}
	srv.Subscribe("v/#", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		mu.Lock()
		seen[pk.TopicName]++
		mu.Unlock()
	})

	dir := t.TempDir()
	vins := []string{"WVWZZZ1JZXW000001", "WVWZZZ1JZXW000002"}
	fleetFile := writeFleet(t, dir, vins...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		code           int
		stdout, stderr *testutil.Buffer
	}
	done := make(chan result, 1)
	stdout := &testutil.Buffer{}
	go func() {
		code, out, errOut := runMainOut(ctx, stdout, []string{"run", "--fleet", fleetFile, "--telemetry-interval", "50ms", "--log-level", "warn",
			"--link-addr", "127.0.0.1:0"},
			map[string]string{"SIM_BROKER": b.URL(), "SIM_DATA": filepath.Join(dir, "data")})
		done <- result{code, out, errOut}
	}()
	testutil.Eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, v := range vins {
			if seen[protocol.VehicleTopic(v, protocol.SuffixStatus)] == 0 || seen[protocol.VehicleTopic(v, protocol.SuffixTelemetry)] < 2 {
				return fmt.Errorf("seen %v", seen)
			}
		}
		return nil
	})

	// The cars are on the local link: a challenge for each, 404 for a car not run here.
	var linkURL string
	testutil.Eventually(t, 5*time.Second, func() error {
		_, rest, ok := strings.Cut(stdout.String(), "local link on ")
		if !ok {
			return fmt.Errorf("stdout %q names no local link", stdout)
		}
		linkURL, _, _ = strings.Cut(rest, " ")
		return nil
	})
	for _, v := range vins {
		resp, err := http.Post(linkURL+"/v1/link/"+v+"/challenge", "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		var ch protocol.Challenge
		err = json.NewDecoder(resp.Body).Decode(&ch)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil || ch.VIN != v || ch.Nonce == "" {
			t.Fatalf("challenge of %s: %d %+v %v", v, resp.StatusCode, ch, err)
		}
	}
	resp, err := http.Post(linkURL+"/v1/link/WVWZZZ1JZXW000999/challenge", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("challenge of a car not run here: %d", resp.StatusCode)
	}
	cancel() // what SIGINT does through signal.NotifyContext
	select {
	case r := <-done:
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if out := r.stdout.String(); !strings.Contains(out, "running 2 cars") || !strings.Contains(out, "stopped: 2/2 cars ran") {
			t.Errorf("stdout %q", out)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop")
	}
	// The cars are in the data dir now, with their credentials.
	st, err := carstore.Open(filepath.Join(dir, "data", carstore.File))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	creds, err := st.Credentials()
	if err != nil || len(creds) != 2 {
		t.Fatalf("stored credentials %v %v", creds, err)
	}
}
