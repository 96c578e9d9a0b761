package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"telematics/internal/testutil"
	"telematics/pkg/cmdline"
	"telematics/pkg/sign"
)

// runBroker runs the broker's command line in process, as `broker ARGS...` with environ, to
// completion (help, errors).
func runBroker(t *testing.T, environ []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = cmdline.ExecuteWithEnv(context.Background(), newRoot(environ), args, environ, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// startBroker runs the broker's command line until it logged its start; stop ends it with the
// equivalent of SIGTERM and returns its exit status and its stderr.
func startBroker(t *testing.T, environ []string, args ...string) (started string, stop func() (int, string)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout bytes.Buffer
	var stderr testutil.Buffer
	done := make(chan int, 1)
	go func() {
		done <- cmdline.ExecuteWithEnv(ctx, newRoot(environ), args, environ, strings.NewReader(""), &stdout, &stderr)
	}()
	startedRE := regexp.MustCompile(`msg="broker started".*`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := startedRE.FindString(stderr.String()); m != "" {
			started = m
			break
		}
		select {
		case code := <-done:
			cancel()
			t.Fatalf("the broker exited with %d before starting:\n%s", code, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no start logged:\n%s", stderr.String())
		}
	}
	return started, func() (int, string) {
		cancel()
		code := <-done
		return code, stderr.String()
	}
}

// writePubKey writes a new gateway key's public half to a file; it returns the file and the key.
func writePubKey(t *testing.T) (string, *sign.Signer) {
	t.Helper()
	signer, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := sign.PublicPEM(signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "gateway.pub")
	if err := os.WriteFile(p, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, signer
}

func TestBrokerFlagsInAnyOrderAndOff(t *testing.T) {
	key, _ := writePubKey(t)
	for _, tc := range []struct {
		name    string
		environ []string
		args    []string
		want    string // in the start log line
	}{
		{"flags", nil, []string{"--ws-addr", "off", "--mqtt-addr=127.0.0.1:0", "--gateway-pubkey", key},
			`mqtt_addr=127.0.0.1:\d+ ws_addr=""`},
		{"other order", nil, []string{"--gateway-pubkey=" + key, "--mqtt-addr", "off", "--ws-addr", "127.0.0.1:0"},
			`mqtt_addr="" ws_addr=127.0.0.1:\d+`},
		{"environment", []string{"BROKER_GATEWAY_PUBKEY=" + key, "BROKER_MQTT_ADDR=127.0.0.1:0", "BROKER_WS_ADDR=off"}, nil,
			`mqtt_addr=127.0.0.1:\d+ ws_addr=""`},
		{"flag over environment", []string{"BROKER_GATEWAY_PUBKEY=" + key, "BROKER_MQTT_ADDR=off", "BROKER_WS_ADDR=off"},
			[]string{"--mqtt-addr", "127.0.0.1:0"}, `mqtt_addr=127.0.0.1:\d+ ws_addr=""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			started, stop := startBroker(t, tc.environ, tc.args...)
			if !regexp.MustCompile(tc.want).MatchString(started) {
				t.Errorf("started with %s, want %s", started, tc.want)
			}
			if code, stderr := stop(); code != 0 {
				t.Errorf("exit %d after the signal, want 0:\n%s", code, stderr)
			}
		})
	}
}

// The issue: "the broker refuses off"; and "" meant "disabled" here but "the default" in the
// gateway: it is refused, saying what to write.
func TestBrokerRefusesAnEmptyAddress(t *testing.T) {
	key, _ := writePubKey(t)
	for _, tc := range []struct {
		environ []string
		args    []string
	}{
		{nil, []string{"--gateway-pubkey", key, "--ws-addr", ""}},
		{[]string{"BROKER_WS_ADDR="}, []string{"--gateway-pubkey", key}},
	} {
		code, _, stderr := runBroker(t, tc.environ, tc.args...)
		if code != 2 || !strings.Contains(stderr, "ws_addr (--ws-addr, BROKER_WS_ADDR): empty address; write off") {
			t.Errorf("%v %q: exit %d, %s", tc.environ, tc.args, code, stderr)
		}
	}
}

func TestBrokerHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"--gateway-pubkey", "x", "--help"}} {
		code, stdout, stderr := runBroker(t, nil, args...)
		if code != 0 || stderr != "" {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
		// Every setting has its flag, its variable and its default in the help.
		for _, want := range []string{
			"--config file", "[$BROKER_CONFIG]",
			"--mqtt-addr address", `[$BROKER_MQTT_ADDR] (default "127.0.0.1:1883")`,
			"--ws-addr address", "[$BROKER_WS_ADDR]",
			"--gateway-pubkey file", "[$BROKER_GATEWAY_PUBKEY]",
			"--state-file file", "[$BROKER_STATE_FILE]",
			"--max-packet-bytes bytes", "[$BROKER_MAX_PACKET_BYTES] (default 65536)",
			"--max-topic-bytes", "--max-conns-per-identity", "--max-client-writes-pending",
			"--max-clients", "[$BROKER_MAX_CLIENTS]",
			"--connect-timeout duration", "(default 10s)", "--session-expiry", "(default 1h0m0s)",
			"or off",
		} {
			if !strings.Contains(stdout, want) {
				t.Errorf("%q: help lacks %q:\n%s", args, want, stdout)
				break
			}
		}
	}
	code, stdout, _ := runBroker(t, nil, "--version")
	if code != 0 || !regexp.MustCompile(`^broker \S+ \(go1\.\S+, .+\)\n$`).MatchString(stdout) {
		t.Errorf("--version: exit %d, %q", code, stdout)
	}
	code, stdout, _ = runBroker(t, nil, "completion", "bash")
	if code != 0 || !strings.Contains(stdout, "broker") {
		t.Errorf("completion bash: exit %d", code)
	}
}

func TestBrokerUsageErrors(t *testing.T) {
	key, _ := writePubKey(t)
	for _, tc := range []struct {
		environ []string
		args    []string
		want    string
	}{
		{nil, []string{"--gateway-pubkey", key, "--nope"}, "unknown flag: --nope"},
		{nil, []string{"--gateway-pubkey", key, "extra"}, `unknown command "extra" for "broker"`},
		{nil, []string{"--gateway-pubkey", key, "--max-clients", "lots"}, `invalid argument "lots" for "--max-clients"`},
		{[]string{"BROKER_MAX_CLIENTS=lots"}, []string{"--gateway-pubkey", key}, `BROKER_MAX_CLIENTS="lots"`},
		{nil, []string{"--gateway-pubkey", key, "--connect-timeout", "0s"}, "connect_timeout: 0s must be positive"},
	} {
		code, _, stderr := runBroker(t, tc.environ, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v %q: exit %d, want 2 and %q:\n%s", tc.environ, tc.args, code, tc.want, stderr)
		}
	}
}

// The issue: "A YAML indentation error on line 81 is reported at line 8": a configuration
// error names the file, the line of the problem and the key.
func TestBrokerConfigErrorsNameTheLine(t *testing.T) {
	shipped, err := os.ReadFile(filepath.Join("..", "configs", "broker.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// edit writes the shipped file with the line old replaced by new (several lines, perhaps),
	// and returns its path and the line number of bad, a line of new.
	edit := func(name, old, new, bad string) (string, int) {
		text := strings.Replace(string(shipped), old+"\n", new+"\n", 1)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		for i, l := range strings.Split(text, "\n") {
			if l == bad {
				return p, i + 1
			}
		}
		t.Fatalf("%q not in %s", bad, name)
		return "", 0
	}
	badIndent, indentLine := edit("bad-indent.yaml", "gateway_pubkeys: []", "gateway_pubkeys:\n  - a.pub\n\n - b.pub", " - b.pub")
	typo, typoLine := edit("typo.yaml", "max_clients: 0", "max_clientz: 0", "max_clientz: 0")
	badValue, valueLine := edit("value.yaml", "connect_timeout: 10s", "connect_timeout: 10sec", "connect_timeout: 10sec")
	if indentLine < 10 {
		t.Fatalf("the bad line %d is too close to the top to tell it from the block's", indentLine)
	}

	for _, tc := range []struct {
		path string
		want []string
	}{
		{badIndent, []string{"bad-indent.yaml", "line " + strconv.Itoa(indentLine) + ":", "did not find expected"}},
		{typo, []string{"typo.yaml", "line " + strconv.Itoa(typoLine) + ": max_clientz: unknown key"}},
		{badValue, []string{"value.yaml", "line " + strconv.Itoa(valueLine) + ": connect_timeout:", "10sec"}},
	} {
		code, _, stderr := runBroker(t, nil, "--config", tc.path)
		if code != 2 {
			t.Errorf("%s: exit %d, want 2", tc.path, code)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("error lacks %q:\n%s", w, stderr)
			}
		}
	}
}
