package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"telematics/pkg/protocol"
	"telematics/pkg/token"
)

const runMainEnv = "BROKER_TEST_RUN_MAIN"

// TestMain lets the test binary stand in for the broker binary: with runMainEnv set it runs
// main with the arguments it was given.
func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// brokerCmd is the broker binary (this test binary) with args and a clean BROKER_ environment.
func brokerCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BROKER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, runMainEnv+"=1")
	return cmd
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestMissingPubkeyExits2(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := brokerCmd(ctx, "--mqtt-addr", "127.0.0.1:0").CombinedOutput()
	if code := exitCode(err); code != 2 {
		t.Fatalf("exit %d, want 2:\n%s", code, out)
	}
	if !strings.Contains(string(out), "--gateway-pubkey") {
		t.Errorf("the error does not say what to do:\n%s", out)
	}

	out, err = brokerCmd(ctx, "--gateway-pubkey", filepath.Join(t.TempDir(), "absent.pub")).CombinedOutput()
	if code := exitCode(err); code != 2 {
		t.Fatalf("unreadable key: exit %d, want 2:\n%s", code, out)
	}
}

func TestServeAndSignal(t *testing.T) {
	keyPath, signer := writePubKey(t)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := brokerCmd(ctx, "--mqtt-addr", "127.0.0.1:0")
	cmd.Env = append(cmd.Env, "BROKER_GATEWAY_PUBKEY="+keyPath, "BROKER_WS_ADDR=off")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	lines := bufio.NewScanner(stderr)
	addrRE := regexp.MustCompile(`msg="broker started" mqtt_addr=(\S+)`)
	var addr string
	for addr == "" && lines.Scan() {
		logs.WriteString(lines.Text() + "\n")
		if m := addrRE.FindStringSubmatch(lines.Text()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		_ = cmd.Process.Kill()
		t.Fatalf("no address logged:\n%s", logs.String())
	}
	rest := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(stderr)
		rest <- string(b)
	}()

	// A car gets in; a car presenting its token under another client id does not.
	tok, _, err := token.NewIssuer(signer, nil).Issue("WVWZZZ1JZXW000001", protocol.RoleVehicle, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	connect := func(clientID string) error {
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(clientID).
			SetUsername("WVWZZZ1JZXW000001").SetPassword(tok).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
		ct := c.Connect()
		if !ct.WaitTimeout(5 * time.Second) {
			return errors.New("connect timed out")
		}
		if ct.Error() == nil {
			c.Disconnect(50)
		}
		return ct.Error()
	}
	if err := connect("WVWZZZ1JZXW000001"); err != nil {
		t.Errorf("car refused: %v", err)
	}
	if err := connect("WVWZZZ1JZXW000002"); err == nil {
		t.Error("car admitted under another VIN")
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	logs.WriteString(<-rest)
	if code := exitCode(err); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0:\n%s", code, logs.String())
	}
	for _, want := range []string{"mqtt connect refused", "broker stopped"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	if strings.Contains(logs.String(), tok) || strings.Contains(logs.String(), strings.Split(tok, ".")[2]) {
		t.Errorf("a token reached the log:\n%s", logs.String())
	}
}

// A plain-text listener off loopback is a configuration error that says what to do.
func TestPlaintextOffLoopbackExits2(t *testing.T) {
	keyPath, _ := writePubKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := brokerCmd(ctx, "--gateway-pubkey", keyPath, "--mqtt-addr", "0.0.0.0:0", "--ws-addr", "off").CombinedOutput()
	if code := exitCode(err); code != 2 {
		t.Fatalf("exit %d, want 2:\n%s", code, out)
	}
	for _, want := range []string{"mqtt_addr", "allow_plaintext", "TLS"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the error lacks %q:\n%s", want, out)
		}
	}
}
