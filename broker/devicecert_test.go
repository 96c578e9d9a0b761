package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/devicecert"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
)

// TestDeviceCertificatesOnTheBrokerBinary: the broker binary with --tls-cert, --tls-key and
// --client-ca on the gateway's device-ca.crt, the gateway in front of it over ssl://. A car
// provisioned with a device certificate (`vehicle add --cert`) connects with it alone
// (mosquitto clients), reaches its own topics and not another car's; after `reissue --cert`
// the old certificate is refused and the new one admitted, also after the broker restarts on
// its state file with the gateway away.
func TestDeviceCertificatesOnTheBrokerBinary(t *testing.T) {
	for _, tool := range []string{"mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian: apt-get install mosquitto-clients)", tool)
		}
	}
	// What the gateway makes on its first start, made first here so that the broker can start
	// before it: the signing key (the broker gets its public half), the device CA and the
	// local CA with its server certificate, which broker and gateway share.
	dir := t.TempDir()
	signer, _, err := sign.LoadOrCreate(filepath.Join(dir, server.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := sign.PublicPEM(signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(dir, server.PublicKeyFile)
	if err := os.WriteFile(pubFile, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := devicecert.LoadOrCreate(dir, nil); err != nil {
		t.Fatal(err)
	}
	ca, err := tlsconf.EnsureLocalCA(dir, tlsconf.DefaultHosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	addr := testutil.FreeAddr(t)
	args := []string{"--gateway-pubkey", pubFile, "--mqtt-addr", "off", "--ws-addr", "off",
		"--tls-mqtt-addr", addr, "--tls-ws-addr", "off", "--tls-cert", ca.Files.Cert, "--tls-key", ca.Files.Key,
		"--client-ca", filepath.Join(dir, server.DeviceCAFile), "--state-file", filepath.Join(t.TempDir(), "state.json")}
	b := startBrokerBinary(t, args...)

	c := harness.MustStart(t, harness.Options{Dir: dir, Configure: func(cfg *server.Config) {
		cfg.ExternalBroker = "ssl://" + addr // verified with the gateway's CA, ca.Files' CA
	}})
	adm := api.NewClient(c.G.HTTPURL(), c.G.AdminToken())
	ctx := context.Background()
	creds, err := adm.AddVehicles(ctx, api.AddVehiclesRequest{Count: 2, Cert: true})
	if err != nil {
		t.Fatal(err)
	}
	carA, carB := creds[0], creds[1]
	oldA, certB := writeCarCert(t, carA), writeCarCert(t, carB)

	mosquitto := func(tool string, vin string, cert []string, extra ...string) (string, error) {
		t.Helper()
		h, p, _ := strings.Cut(addr, ":")
		args := append([]string{"-h", h, "-p", p, "-V", "mqttv311", "-i", vin, "--cafile", ca.CA}, cert...)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, tool, append(args, extra...)...).CombinedOutput()
		return string(out), err
	}
	publish := func(vin string, cert []string) (string, error) {
		t.Helper()
		return mosquitto("mosquitto_pub", vin, cert, "-t", "v/"+vin+"/telemetry", "-m", "{}")
	}

	if out, err := publish(carA.VIN, oldA); err != nil {
		t.Fatalf("car A's device certificate: %v\n%s", err, out)
	}
	if out, _ := mosquitto("mosquitto_sub", carA.VIN, oldA, "-d", "-t", "v/"+carA.VIN+"/cmd", "-C", "1", "-W", "3"); !strings.Contains(out, "SUBACK") || strings.Contains(out, "denied") {
		t.Errorf("car A subscribing to its commands:\n%s", out)
	}
	if out, _ := mosquitto("mosquitto_sub", carA.VIN, oldA, "-d", "-t", "v/"+carB.VIN+"/cmd", "-C", "1", "-W", "3"); !strings.Contains(out, "All subscription requests were denied") {
		t.Errorf("car A subscribing to car B's commands:\n%s", out)
	}
	if out, err := publish(carA.VIN, certB); err == nil || !strings.Contains(out, "not authorised") {
		t.Errorf("car B's certificate as car A: %v\n%s", err, out)
	}
	if out, err := publish(carA.VIN, nil); err == nil || !strings.Contains(out, "not authorised") {
		t.Errorf("no certificate and no token: %v\n%s", err, out)
	}

	fresh, err := adm.Reissue(ctx, carA.VIN, api.ReissueRequest{Cert: true})
	if err != nil {
		t.Fatal(err)
	}
	newA := writeCarCert(t, fresh)
	refusedOld := func() error {
		out, err := publish(carA.VIN, oldA)
		if err == nil {
			return errors.New("the retired certificate is still admitted")
		}
		if !strings.Contains(out, "not authorised") {
			return errors.New("the retired certificate: " + out)
		}
		return nil
	}
	testutil.Eventually(t, 20*time.Second, refusedOld)
	if out, err := publish(carA.VIN, newA); err != nil {
		t.Fatalf("the reissued certificate: %v\n%s", err, out)
	}

	// The gateway away, the broker restarted: its state file still retires the old certificate.
	if err := c.Down(); err != nil {
		t.Fatal(err)
	}
	b.stop(t)
	startBrokerBinary(t, args...)
	if err := refusedOld(); err != nil {
		t.Errorf("after a restart: %v", err)
	}
	for _, car := range []struct {
		vin  string
		cert []string
	}{{carA.VIN, newA}, {carB.VIN, certB}} {
		if out, err := publish(car.vin, car.cert); err != nil {
			t.Errorf("after a restart, %s's current certificate: %v\n%s", car.vin, err, out)
		}
	}
}

// writeCarCert writes a car's device certificate and key (0600) from its credentials and
// returns the mosquitto clients' options for them.
func writeCarCert(t *testing.T, cr protocol.Credentials) []string {
	t.Helper()
	if cr.Cert == "" || cr.CertKey == "" {
		t.Fatalf("credentials of %s without a device certificate", cr.VIN)
	}
	d := t.TempDir()
	cert, key := filepath.Join(d, "car.crt"), filepath.Join(d, "car.key")
	if err := os.WriteFile(cert, []byte(cr.Cert), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, []byte(cr.CertKey), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"--cert", cert, "--key", key}
}

// brokerProc is the broker binary running for a test.
type brokerProc struct {
	cmd    *exec.Cmd
	logs   testutil.Buffer
	exited chan struct{}
	err    error // once exited is closed
	once   sync.Once
}

// startBrokerBinary starts the broker binary with args and waits until it logs that it
// started; the test's cleanup stops it.
func startBrokerBinary(t *testing.T, args ...string) *brokerProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &brokerProc{cmd: brokerCmd(ctx, args...), exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.logs, &p.logs
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.stop(t)
		cancel()
	})
	testutil.Eventually(t, 30*time.Second, func() error {
		select {
		case <-p.exited:
			t.Fatalf("the broker exited: %v\n%s", p.err, p.logs.String())
		default:
		}
		if !strings.Contains(p.logs.String(), `msg="broker started"`) {
			return errors.New("the broker has not started yet")
		}
		return nil
	})
	return p
}

// stop ends the broker with SIGTERM and expects exit status 0; a second call does nothing.
func (p *brokerProc) stop(t *testing.T) {
	t.Helper()
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
			t.Errorf("the broker did not stop on SIGTERM:\n%s", p.logs.String())
			return
		}
		if code := exitCode(p.err); code != 0 {
			t.Errorf("the broker exited %d after SIGTERM, want 0:\n%s", code, p.logs.String())
		}
	})
}
