package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/mqttc"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
)

// tlsAdmin is the admin API over HTTPS, trusting the CA file ca.
func tlsAdmin(t testing.TB, g *server.Gateway, ca string) *api.Client {
	t.Helper()
	c := api.NewClient(g.HTTPSURL(), g.AdminToken())
	hc, err := tlsconf.HTTPClient(ca, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.HTTP = hc
	return c
}

// A car and its owner's phone over TLS only: provisioning over HTTPS hands the car the CA, the
// car connects to ssl://, the owner logs in over HTTPS and commands over ssl://.
func TestTLSEndToEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGateway(t, dir, nil)
	ca := g.CAFile()
	if ca != filepath.Join(dir, tlsconf.CAFile) || g.HTTPSURL() == "" || !strings.HasPrefix(g.BrokerTLSURL(), "ssl://127.0.0.1:") {
		t.Fatalf("TLS listeners: ca %q, https %q, mqtt %q", ca, g.HTTPSURL(), g.BrokerTLSURL())
	}
	for _, f := range []string{tlsconf.CAKeyFile, tlsconf.ServerKeyFile} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", f, err, fi)
		}
	}
	adm := tlsAdmin(t, g, ca)
	creds, err := adm.AddVehicles(context.Background(), api.AddVehiclesRequest{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(ca)
	if creds[0].CAPEM != string(pem) {
		t.Fatalf("the credentials carry ca_pem %q, want the CA of %s", creds[0].CAPEM, ca)
	}
	vin := creds[0].VIN
	trust, err := tlsconf.ClientConfigPEM([]byte(creds[0].CAPEM))
	if err != nil {
		t.Fatal(err)
	}
	harness.MustStartFleet(t, harness.FleetOptions{BrokerURL: g.BrokerTLSURL(), TLS: trust, Creds: creds, TelemetryInterval: 200 * time.Millisecond})
	waitOnline(t, g, vin)

	if err := adm.AddUser(context.Background(), "tina", password); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.Assign(context.Background(), vin, "tina", protocol.RoleOwner); err != nil {
		t.Fatal(err)
	}
	sess, err := phone.LoginCA(context.Background(), g.HTTPSURL(), ca, "tina", password, "")
	if err != nil {
		t.Fatal(err)
	}
	key, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := phone.PairKey(context.Background(), sess, key, vin, "tls phone", ""); err != nil {
		t.Fatal(err)
	}
	app, err := phone.ConnectWith(context.Background(), sess, phone.ConnectOptions{BrokerURL: g.BrokerTLSURL(), Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	waitSynced(t, g, vin)
	expect(t, send(t, app, vin, protocol.ActionUnlock), protocol.ReplyExecuted, "")
}

// A client that does not trust the gateway's CA gets a clear error, at once, and never a
// plain-text connection instead.
func TestTLSWrongCertificate(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), nil)
	other, err := tlsconf.EnsureLocalCA(t.TempDir(), tlsconf.DefaultHosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, err = tlsAdmin(t, g, other.CA).Vehicles(context.Background())
	var verify *tls.CertificateVerificationError
	if !errors.As(err, &verify) {
		t.Errorf("HTTPS with another CA: %v, want a certificate verification error", err)
	}

	wrong, _ := tlsconf.ClientConfig(other.CA)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err = mqttc.Dial(ctx, mqttc.Options{BrokerURL: g.BrokerTLSURL(), ClientID: "WVWZZZ1JZXW000001", TLS: wrong})
	if !errors.Is(err, mqttc.ErrTLS) || ctx.Err() != nil {
		t.Errorf("MQTT over TLS with another CA: %v (after %v), want ErrTLS at once", err, time.Since(start))
	}
	_, err = mqttc.Dial(ctx, mqttc.Options{BrokerURL: g.BrokerURL(), ClientID: "WVWZZZ1JZXW000001", TLS: wrong})
	if err == nil || !strings.Contains(err.Error(), "plain text") {
		t.Errorf("a TLS configuration with a tcp:// URL: %v", err)
	}
}

// The local CA is made once: a restart serves a certificate of the same CA.
func TestTLSLocalCAKept(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGateway(t, dir, nil)
	first, _ := os.ReadFile(g.CAFile())
	g.Close()
	g = startGateway(t, dir, nil)
	again, _ := os.ReadFile(g.CAFile())
	if len(first) == 0 || !bytes.Equal(first, again) {
		t.Fatal("the restarted gateway made a new CA")
	}
	if _, err := tlsAdmin(t, g, g.CAFile()).Vehicles(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestPlaintextListenerOffLoopbackRefused(t *testing.T) {
	t.Parallel()
	none := func(string) (string, bool) { return "", false }
	for _, args := range [][]string{
		{"--http-addr", "0.0.0.0:8080"},
		{"--mqtt-addr", ":1883"},
		{"--ws-addr", "gw.example.net:1882"},
		{"--external-broker", "tcp://broker:1883"},
	} {
		_, err := server.ParseServeFlags(args, io.Discard, none)
		if !errors.Is(err, tlsconf.ErrPlaintext) || !strings.Contains(err.Error(), "allow_plaintext") {
			t.Errorf("%v: %v, want a refusal that names allow_plaintext", args, err)
		}
		if _, err := server.ParseServeFlags(append(args, "--allow-plaintext"), io.Discard, none); err != nil {
			t.Errorf("%v --allow-plaintext: %v", args, err)
		}
	}
	if _, err := server.ParseServeFlags([]string{"--http-addr", "off", "--tls-http-addr", "0.0.0.0:8443", "--mqtt-addr", "off", "--tls-mqtt-addr", ":8883", "--ws-addr", "off"}, io.Discard, none); err != nil {
		t.Errorf("TLS on every interface, plain text off: %v", err)
	}
}

// curl, which nobody here wrote, reaches the HTTPS API with the CA and not without it, and
// cannot make the gateway speak TLS 1.1.
func TestTLSCurl(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed (Debian: apt-get install curl)")
	}
	g := startGateway(t, t.TempDir(), nil)
	run := func(args ...string) (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, curl, append([]string{"-sS", "--max-time", "15"}, args...)...).CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("curl: %v", err)
		}
		return string(out), 0
	}
	url := g.HTTPSURL() + "/v1/admin/vehicles"
	out, code := run("--cacert", g.CAFile(), "-H", "Authorization: Bearer "+g.AdminToken(), "-w", "\n%{http_code}", url)
	if code != 0 || !strings.HasSuffix(out, "\n200") {
		t.Errorf("curl --cacert: exit %d\n%s", code, out)
	}
	if out, code := run(url); code != 60 { // 60: peer certificate cannot be authenticated
		t.Errorf("curl without the CA: exit %d, want 60\n%s", code, out)
	}
	if out, code := run("--cacert", g.CAFile(), "--tlsv1.1", "--tls-max", "1.1", "--ciphers", "DEFAULT:@SECLEVEL=0", url); code == 0 {
		t.Errorf("curl over TLS 1.1 got an answer:\n%s", out)
	}
}

// SIGHUP makes `gateway serve` serve new certificate files; a connection made before stays up.
func TestTLSReloadOnSIGHUP(t *testing.T) {
	t.Parallel()
	bin := buildGateway(t)
	dir, certs := t.TempDir(), t.TempDir()
	first, err := tlsconf.EnsureLocalCA(filepath.Join(certs, "first"), tlsconf.DefaultHosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	second, err := tlsconf.EnsureLocalCA(filepath.Join(certs, "second"), tlsconf.DefaultHosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(certs, "cert.pem"), filepath.Join(certs, "key.pem")
	install := func(ca tlsconf.LocalCA) {
		for _, c := range [][2]string{{ca.Files.Cert, certFile}, {ca.Files.Key, keyFile}} {
			b, err := os.ReadFile(c[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := sign.WriteFileAtomic(c[1], b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(first)
	httpsAddr := testutil.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--data", dir, "--init", "--http-addr", "off", "--mqtt-addr", "127.0.0.1:0",
		"--ws-addr", "off", "--tls-mqtt-addr", "off", "--tls-ws-addr", "off", "--tls-http-addr", httpsAddr,
		"--tls-cert", certFile, "--tls-key", keyFile)
	cmd.Env = append(os.Environ(), "GATEWAY_LOG_LEVEL=info")
	var logs testutil.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("gateway output:\n%s", logs.String())
		}
	}()

	dial := func(ca tlsconf.LocalCA) (*tls.Conn, error) {
		cfg, err := tlsconf.ClientConfig(ca.CA)
		if err != nil {
			return nil, err
		}
		return tls.Dial("tcp", httpsAddr, cfg)
	}
	get := func(c *tls.Conn, r *bufio.Reader) error {
		if _, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz: %s", resp.Status)
		}
		return nil
	}
	var old *tls.Conn
	testutil.Eventually(t, 60*time.Second, func() (err error) {
		old, err = dial(first)
		return err
	})
	defer old.Close()
	oldR := bufio.NewReader(old)
	if err := get(old, oldR); err != nil {
		t.Fatal(err)
	}

	install(second)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		c, err := dial(second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if c, err := dial(first); err == nil {
		c.Close()
		t.Error("the first certificate is still served after SIGHUP")
	}
	if err := get(old, oldR); err != nil {
		t.Errorf("the connection made before SIGHUP: %v", err)
	}
	if !strings.Contains(logs.String(), "TLS certificates reloaded") {
		t.Errorf("no reload in the log")
	}
}

// A stranger's failed TLS handshake on the HTTPS port (a scanner speaking plain HTTP) is a
// debug line of the gateway's logger, not a line Go's standard logger prints to stderr.
func TestTLSHandshakeErrorsGoToTheLogger(t *testing.T) {
	t.Parallel()
	var logs testutil.Buffer
	c := harness.MustStart(t, harness.Options{PasswordParams: &cheap,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(c.G.HTTPSURL(), "https://"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprint(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	_, _ = io.Copy(io.Discard, conn) // the server answers with a TLS alert or closes
	conn.Close()
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, "TLS handshake error") {
				if !strings.Contains(line, "level=DEBUG") || !strings.Contains(line, "component=http") {
					return fmt.Errorf("logged as %q, want a debug line of component http", line)
				}
				return nil
			}
		}
		return errors.New("no TLS handshake error logged")
	})
}
