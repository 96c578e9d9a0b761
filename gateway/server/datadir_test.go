package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/broker"
	"telematics/pkg/sign"
)

// `gateway serve --data /nonexistent/deep/dir`: a typo is refused, not made into a new gateway.
func TestServeRefusesATypoedDataDir(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	typo := filepath.Join(base, "nonexistent", "deep", "dir")
	var out, errb bytes.Buffer
	code := server.Serve(context.Background(), []string{"--data", typo, "--http-addr", "127.0.0.1:0",
		"--mqtt-addr", "127.0.0.1:0", "--ws-addr", "off"}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "does not exist") || !strings.Contains(errb.String(), "--init") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	assertNoEntries(t, base)
}

// A start that fails (a busy port) leaves nothing in a data dir it created, and no new file
// in an empty one that existed: no fresh signing key, admin token or database.
func TestFailedStartLeavesNoFreshKeys(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	base := t.TempDir()
	empty := filepath.Join(base, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, data, mqtt, http string }{
		{"new dir, MQTT port busy", filepath.Join(base, "new", "data"), busy.Addr().String(), "127.0.0.1:0"},
		{"new dir, HTTP port busy", filepath.Join(base, "new", "data"), "127.0.0.1:0", busy.Addr().String()},
		{"empty dir, MQTT port busy", empty, busy.Addr().String(), "127.0.0.1:0"},
	} {
		cfg := server.DefaultConfig()
		cfg.Data, cfg.MQTTAddr, cfg.WSAddr, cfg.HTTPAddr = tc.data, tc.mqtt, "", tc.http
		cfg.TLS.MQTTAddr, cfg.TLS.WSAddr, cfg.TLS.HTTPAddr = "", "", "" // fixed ports would collide with parallel tests
		if g, err := server.Start(context.Background(), cfg, server.Options{}); err == nil {
			g.Close()
			t.Fatalf("%s: started", tc.name)
		}
		if _, err := os.Stat(filepath.Join(base, "new")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the data dir the start created is still there: %v", tc.name, err)
		}
		assertNoEntries(t, empty)
	}
}

// `gateway rotate-key --data nodir` (either form) leaves nothing behind.
func TestRotateKeyOnAMissingDirLeavesNothing(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	nodir := filepath.Join(base, "nodir")
	for name, rotate := range map[string]func(string, io.Writer) error{
		"rotate-key": server.RotateSigningKey, "rotate-key --retire-previous": server.RetirePreviousKey} {
		if err := rotate(nodir, io.Discard); err == nil || !strings.Contains(err.Error(), "no gateway in") {
			t.Errorf("%s: %v", name, err)
		}
	}
	assertNoEntries(t, base)
}

// While `serve --external-broker` waits for an unreachable broker, /healthz answers 200 and
// /readyz 503; once the broker is up the gateway finishes starting and /readyz is 200.
func TestHealthzWhileTheExternalBrokerIsUnreachable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	signer, _, err := sign.LoadOrCreate(filepath.Join(dir, server.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	brokerAddr, httpAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	cfg := server.DefaultConfig()
	cfg.Data, cfg.HTTPAddr, cfg.ExternalBroker = dir, httpAddr, "tcp://"+brokerAddr
	cfg.TLS.MQTTAddr, cfg.TLS.WSAddr, cfg.TLS.HTTPAddr = "", "", "" // fixed ports would collide with parallel tests
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type started struct {
		g   *server.Gateway
		err error
	}
	done := make(chan started, 1)
	go func() {
		g, err := server.Start(ctx, cfg, server.Options{PasswordParams: &cheap})
		done <- started{g, err}
	}()
	status := func(path string) (int, error) {
		resp, err := http.Get("http://" + httpAddr + path)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if code, err := status("/healthz"); err != nil || code != http.StatusOK {
			return fmt.Errorf("healthz: %d %v", code, err)
		}
		if code, err := status("/readyz"); err != nil || code != http.StatusServiceUnavailable {
			return fmt.Errorf("readyz: %d %v", code, err)
		}
		return nil
	})
	select {
	case s := <-done:
		t.Fatalf("Start returned without a broker: %v", s.err)
	default:
	}

	bcfg := broker.DefaultConfig()
	bcfg.MQTTAddr, bcfg.WSAddr = brokerAddr, ""
	b, err := broker.New(bcfg, []*ecdsa.PublicKey{signer.Public()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	s := <-done
	if s.err != nil {
		t.Fatal(s.err)
	}
	defer s.g.Close()
	testutil.Eventually(t, 10*time.Second, func() error {
		if code, err := status("/readyz"); err != nil || code != http.StatusOK {
			return fmt.Errorf("readyz: %d %v", code, err)
		}
		return nil
	})
}

func assertNoEntries(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("%s is not empty: %v %v", dir, names, err)
	}
}
