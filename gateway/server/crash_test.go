package server_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

type gwProcess struct {
	cmd      *exec.Cmd
	httpURL  string
	mqttAddr string
	dir      string
}

func buildGateway(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gateway")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "telematics/gateway").CombinedOutput()
	if err != nil {
		t.Fatalf("build gateway: %v\n%s", err, out)
	}
	return bin
}

func startProcess(t *testing.T, bin, dir, httpAddr, mqttAddr string) *gwProcess {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--data", dir, "--http-addr", httpAddr, "--mqtt-addr", mqttAddr, "--ws-addr", "off",
		"--tls-mqtt-addr", "off", "--tls-ws-addr", "off", "--tls-http-addr", "off")
	cmd.Env = append(os.Environ(), "GATEWAY_TWOFA_MODE=off", "GATEWAY_LOG_LEVEL=warn")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &gwProcess{cmd: cmd, httpURL: "http://" + httpAddr, mqttAddr: mqttAddr, dir: dir}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	testutil.Eventually(t, 20*time.Second, func() error {
		return api.NewClient(p.httpURL, "").Do(context.Background(), http.MethodGet, "/readyz", nil, nil)
	})
	return p
}

// adminClient is a client of the process's API with its admin token.
func (p *gwProcess) adminClient(t *testing.T) *api.Client {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(p.dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return api.NewClient(p.httpURL, strings.TrimSpace(string(tok)))
}

// TestKillDuringKeyBurst: kill -9 the gateway during a burst of key changes; after the
// restart every acknowledged change is there and the car converges on the same version.
func TestKillDuringKeyBurst(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and kills a gateway process")
	}
	bin := buildGateway(t)
	dir := t.TempDir()
	httpAddr, mqttAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	p := startProcess(t, bin, dir, httpAddr, mqttAddr)
	admin := p.adminClient(t)
	creds, err := admin.AddVehicles(context.Background(), api.AddVehiclesRequest{Count: 1})
	if err != nil {
		t.Fatalf("provision a car: %v", err)
	}
	vin := creds[0].VIN
	if err := admin.AddUser(context.Background(), "alice", password); err != nil {
		t.Fatalf("add alice: %v", err)
	}
	if _, err := admin.Assign(context.Background(), vin, "alice", protocol.RoleOwner); err != nil {
		t.Fatalf("make alice owner of %s: %v", vin, err)
	}
	runFleet(t, "tcp://"+mqttAddr, creds)
	sess, err := phone.Login(context.Background(), p.httpURL, "alice", password, "")
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	ctx, stop := context.WithCancel(context.Background())
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				s, _ := sign.Generate()
				pub, _ := sign.EncodePublic(s.Public())
				k, err := api.NewClient(p.httpURL, sess.Token).PairKey(ctx, api.PairRequest{VIN: vin, PublicKey: pub})
				if err != nil {
					return // the gateway died mid-request: not acknowledged
				}
				mu.Lock()
				acked = append(acked, k.ID)
				mu.Unlock()
			}
		}()
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < 20 {
			return fmt.Errorf("%d keys paired", len(acked))
		}
		return nil
	})
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
	stop()
	wg.Wait()

	p2 := startProcess(t, bin, dir, httpAddr, mqttAddr)
	sess, err = phone.Login(context.Background(), p2.httpURL, "alice", password, "")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Version      uint64                  `json:"version"`
		AckedVersion uint64                  `json:"acked_version"`
		Keys         []protocol.WhitelistKey `json:"keys"`
	}
	if err := api.NewClient(p2.httpURL, sess.Token).Do(context.Background(), http.MethodGet, "/v1/keys?vin="+vin, nil, &st); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, k := range st.Keys {
		have[k.ID] = true
	}
	for _, id := range acked {
		if !have[id] {
			t.Errorf("acknowledged key %s lost in the crash", id)
		}
	}
	if st.Version != uint64(len(st.Keys)) {
		t.Errorf("whitelist version %d for %d keys: a version was skipped or reused", st.Version, len(st.Keys))
	}
	// The car converges on the gateway's version.
	testutil.Eventually(t, 20*time.Second, func() error {
		if err := api.NewClient(p2.httpURL, sess.Token).Do(context.Background(), http.MethodGet, "/v1/keys?vin="+vin, nil, &st); err != nil {
			return err
		}
		if st.AckedVersion != st.Version {
			return fmt.Errorf("car acknowledged %d of %d", st.AckedVersion, st.Version)
		}
		return nil
	})
	t.Logf("%d key changes acknowledged before kill -9, %d keys after restart, car at version %d", len(acked), len(st.Keys), st.AckedVersion)

	// SIGTERM shuts the gateway down cleanly: exit status 0, promptly.
	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p2.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("gateway exited with %v after SIGTERM", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("gateway did not exit within 15 s of SIGTERM")
	}
}
