package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"

	"telematics/internal/testutil"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/devicecert"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
	"telematics/pkg/token"
)

// certWorld is what device certificate tests share across broker restarts: the gateway's
// signing key and device CA, and a server certificate for the TLS listener the tests make
// themselves (tls.VerifyClientCertIfGiven, the device CA as client CA).
type certWorld struct {
	dir          string
	signer       *sign.Signer
	issuer       *token.Issuer
	clock        *clocktest.Fake
	ca           *devicecert.CA
	serverCert   tls.Certificate
	serverCAFile string // what clients trust the listener with
	serverCAs    *x509.CertPool
}

func newCertWorld(t *testing.T) *certWorld {
	t.Helper()
	w := &certWorld{dir: t.TempDir(), clock: newTestClock()}
	var err error
	if w.signer, err = sign.Generate(); err != nil {
		t.Fatal(err)
	}
	w.issuer = token.NewIssuer(w.signer, w.clock)
	if w.ca, _, err = devicecert.LoadOrCreate(filepath.Join(w.dir, "gateway"), w.clock); err != nil {
		t.Fatal(err)
	}
	w.serverCert, w.serverCAFile, w.serverCAs = serverCertificate(t, w.dir)
	return w
}

// serverCertificate makes a CA and a server certificate for 127.0.0.1 signed by it; the CA
// certificate is written to a file for the clients.
func serverCertificate(t *testing.T, dir string) (tls.Certificate, string, *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test server CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "server-ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, caFile, pool
}

// certBroker is a running broker with a TLS listener that asks for client certificates.
type certBroker struct {
	b       *Broker
	logs    *logBuffer
	tlsAddr string
}

// start runs a broker whose auth hook trusts the world's device CA. clientCAs is what the
// listener verifies client certificates with (nil: the device CA alone); follow makes it
// follow the gateway's car tokens with the state file.
func (w *certWorld) start(t *testing.T, clientCAs *x509.CertPool, stateFile string) *certBroker {
	t.Helper()
	cfg := testConfig()
	cfg.StateFile = stateFile
	logs := newLogBuffer(t)
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	keys := []*ecdsa.PublicKey{w.signer.Public()}
	b, err := newBroker(cfg, keys, logger, w.clock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if clientCAs == nil {
		clientCAs = w.ca.Pool()
	}
	tlsCfg := &tls.Config{
		Certificates: []tls.Certificate{w.serverCert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    clientCAs,
		MinVersion:   tls.VersionTLS12,
	}
	tl := newTCPListener("tls", "127.0.0.1:0", cfg.ConnectTimeout)
	tl.listen = func(network, addr string) (net.Listener, error) { return tls.Listen(network, addr, tlsCfg) }
	tl.disconnect = func(id string) { disconnectListenerClients(b.server, id) }
	if err := b.server.AddListener(tl); err != nil {
		t.Fatal(err)
	}
	b.Auth().SetDeviceCAs(w.ca.Pool())
	if stateFile != "" {
		if err := b.FollowCarTokens(keys); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	return &certBroker{b: b, logs: logs, tlsAddr: tl.Address()}
}

// carCert is a device certificate on disk, as a car keeps it.
type carCert struct {
	certFile, keyFile string
	pair              tls.Certificate
	serial            string
}

// issue makes car vin a certificate tied to token id jti with ca, written to files.
func issueCert(t *testing.T, ca *devicecert.CA, dir, vin, jti string) carCert {
	t.Helper()
	iss, err := ca.Issue(vin, jti, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(iss.CertPEM, iss.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, vin+"-"+iss.Serial)
	c := carCert{certFile: base + ".crt", keyFile: base + ".key", pair: pair, serial: iss.Serial}
	if err := os.WriteFile(c.certFile, iss.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.keyFile, iss.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// dialCert connects a Go paho client over TLS with the certificate (none when c is nil).
func (w *certWorld) dialCert(t *testing.T, addr string, c *carCert, cr creds) (paho.Client, error) {
	t.Helper()
	return dialPaho(t, "tls://"+addr, cr, func(o *paho.ClientOptions) {
		cfg := &tls.Config{RootCAs: w.serverCAs, MinVersion: tls.VersionTLS12}
		if c != nil {
			cfg.Certificates = []tls.Certificate{c.pair}
		}
		o.SetTLSConfig(cfg)
	})
}

// retirements is the embedded gateway's part in these tests: each car's current token id.
type retirements struct {
	mu      sync.Mutex
	current map[string]string
}

func (r *retirements) set(vin, jti string) {
	r.mu.Lock()
	r.current[vin] = jti
	r.mu.Unlock()
}

func (r *retirements) retired(id Identity) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, ok := r.current[id.Subject]
	return id.Role == protocol.RoleVehicle && ok && cur != id.TokenID
}

// TestDeviceCertAuth: a car certificate admits its car alone, to its own topics, and the hook
// verifies the chain itself: a certificate the listener accepts from another CA names nobody,
// and an expired one (by the broker's clock) is refused.
func TestDeviceCertAuth(t *testing.T) {
	t.Parallel()
	w := newCertWorld(t)
	other, _, err := devicecert.LoadOrCreate(t.TempDir(), w.clock)
	if err != nil {
		t.Fatal(err)
	}
	// The listener trusts both CAs, as one configured with a wider client CA file would.
	both := w.ca.Pool()
	both.AppendCertsFromPEM(other.CertPEM())
	cb := w.start(t, both, "")
	ret := &retirements{current: map[string]string{}}
	cb.b.Auth().SetRetired(ret.retired)

	certA := issueCert(t, w.ca, w.dir, vinA, "kid.a1")
	foreign := issueCert(t, other, w.dir, vinA, "kid.a1")

	for name, c := range map[string]struct {
		cert *carCert
		cr   creds
		ok   bool
	}{
		"no username":                 {&certA, creds{clientID: vinA}, true},
		"username is the VIN":         {&certA, creds{vinA, vinA, "ignored"}, true},
		"another car's username":      {&certA, creds{vinA, vinB, "x"}, false},
		"another car's client id":     {&certA, creds{clientID: vinB}, false},
		"certificate of another CA":   {&foreign, creds{clientID: vinA}, false},
		"neither certificate nor pwd": {nil, creds{clientID: vinA}, false},
		"token over TLS":              {nil, creds{vinA, vinA, w.token(t, vinA)}, true},
	} {
		cl, err := w.dialCert(t, cb.tlsAddr, c.cert, c.cr)
		if (err == nil) != c.ok {
			t.Errorf("%s: connect error %v, want admitted=%v", name, err, c.ok)
		}
		if cl != nil {
			cl.Disconnect(50)
			waitGoneB(t, cb.b, c.cr.clientID)
		}
	}
	if !cb.logs.contains("not issued by this gateway's device CA") {
		t.Error("the log does not say why the foreign certificate was refused")
	}

	// The car's topics, no other's.
	car := mustConnect(t)(w.dialCert(t, cb.tlsAddr, &certA, creds{clientID: vinA}))
	if got := subscribe(t, car, "v/"+vinA+"/cmd", nil); got != 1 {
		t.Errorf("own cmd: granted %d", got)
	}
	if got := subscribe(t, car, "v/"+vinB+"/cmd", nil); got != 0x80 {
		t.Errorf("another car's cmd: granted %#x, want refused", got)
	}
	if id, ok := cb.b.Auth().Identity(clientOf(t, cb.b, vinA)); !ok || id.Role != protocol.RoleVehicle || id.CertSerial != certA.serial || id.TokenID != "kid.a1" {
		t.Errorf("identity %+v", id)
	}

	// Retired: the car's current token id is another one now; the session it had goes.
	ret.set(vinA, "kid.a2")
	if !cb.b.DropRetired(vinA) {
		t.Error("DropRetired closed no session")
	}
	if _, err := w.dialCert(t, cb.tlsAddr, &certA, creds{clientID: vinA}); err == nil {
		t.Error("retired certificate admitted")
	}
	if !cb.logs.contains("certificate retired") || !cb.logs.contains(certA.serial) {
		t.Error("the log does not name the retired certificate")
	}
	certA2 := issueCert(t, w.ca, w.dir, vinA, "kid.a2")
	c2 := mustConnect(t)(w.dialCert(t, cb.tlsAddr, &certA2, creds{clientID: vinA}))
	c2.Disconnect(50)
	waitGoneB(t, cb.b, vinA)

	// Expired by the broker's clock (the TLS layer's clock still takes it).
	w.clock.Advance(2 * time.Hour)
	if _, err := w.dialCert(t, cb.tlsAddr, &certA2, creds{clientID: vinA}); err == nil {
		t.Error("expired certificate admitted")
	}
}

func (w *certWorld) token(t *testing.T, vin string) string {
	t.Helper()
	tok, _, err := w.issuer.Issue(vin, protocol.RoleVehicle, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func mustConnect(t *testing.T) func(paho.Client, error) paho.Client {
	return func(cl paho.Client, err error) paho.Client {
		t.Helper()
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		return cl
	}
}

func clientOf(t *testing.T, b *Broker, id string) *mqtt.Client {
	t.Helper()
	cl, ok := b.Server().Clients.Get(id)
	if !ok {
		t.Fatalf("no client %s", id)
	}
	return cl
}

// waitGoneB waits until b no longer has a connected client with this id.
func waitGoneB(t *testing.T, b *Broker, clientID string) {
	t.Helper()
	testutil.Eventually(t, waitFor, func() error {
		if cl, ok := b.Server().Clients.Get(clientID); ok && !cl.Closed() {
			return errors.New("client " + clientID + " still connected")
		}
		return nil
	})
}

// mosquittoTLSArgs are a mosquitto client's options for the TLS listener with a device
// certificate (none when c is nil).
func (w *certWorld) mosquittoTLSArgs(t *testing.T, addr, clientID string, c *carCert) []string {
	h, p := hostPort(t, addr)
	args := []string{"-h", h, "-p", p, "-V", "mqttv311", "-i", clientID, "--cafile", w.serverCAFile}
	if c != nil {
		args = append(args, "--cert", c.certFile, "--key", c.keyFile)
	}
	return args
}

// TestDeviceCertMosquitto: Debian's mosquitto clients with a device certificate reach their
// car's topics only; a certificate for another VIN gets that VIN's; a certificate from another
// CA is refused; a retired one is refused after the reissue.
func TestDeviceCertMosquitto(t *testing.T) {
	t.Parallel()
	needTool(t, "/usr/bin/mosquitto_sub")
	needTool(t, "/usr/bin/mosquitto_pub")
	w := newCertWorld(t)
	cb := w.start(t, nil, "")
	ret := &retirements{current: map[string]string{}}
	cb.b.Auth().SetRetired(ret.retired)
	gw := mustPaho(t, "tcp://"+cb.b.MQTTAddr(), creds{gwSub, gwSub, w.tokenFor(t, gwSub, protocol.RoleGateway)}, nil)
	var gwRec recorder
	subscribe(t, gw, "v/#", gwRec.handle)

	certA := issueCert(t, w.ca, w.dir, vinA, "kid.a1")
	certB := issueCert(t, w.ca, w.dir, vinB, "kid.b1")
	other, _, err := devicecert.LoadOrCreate(t.TempDir(), w.clock)
	if err != nil {
		t.Fatal(err)
	}
	foreign := issueCert(t, other, w.dir, vinA, "kid.a1")

	// delivered publishes payload on topic with mosquitto_pub and reports whether the gateway
	// got it: a sentinel published after it arrives behind it.
	delivered := func(t *testing.T, clientID string, c *carCert, topic, payload string) (bool, string, error) {
		t.Helper()
		out, err := run(t, "/usr/bin/mosquitto_pub", append(w.mosquittoTLSArgs(t, cb.tlsAddr, clientID, c), "-t", topic, "-m", payload)...)
		waitGoneB(t, cb.b, clientID)
		sentinel := "sentinel after " + payload
		publish(t, gw, "v/"+vinB+"/status", 1, sentinel)
		testutil.Eventually(t, waitFor, func() error {
			if !gwRec.has("v/" + vinB + "/status " + sentinel) {
				return errors.New("sentinel not delivered")
			}
			return nil
		})
		return gwRec.has(topic + " " + payload), out, err
	}

	for _, c := range []struct {
		name     string
		clientID string
		cert     *carCert
		topic    string
		ok       bool
	}{
		{"own telemetry", vinA, &certA, "v/" + vinA + "/telemetry", true},
		{"another car's telemetry", vinA, &certA, "v/" + vinB + "/telemetry", false},
		{"own cmd topic", vinA, &certA, "v/" + vinA + "/cmd", false},
		{"B's certificate, B's telemetry", vinB, &certB, "v/" + vinB + "/telemetry", true},
		{"B's certificate, A's telemetry", vinB, &certB, "v/" + vinA + "/telemetry", false},
		{"B's certificate as A", vinA, &certB, "v/" + vinA + "/telemetry", false},
		{"certificate of another CA", vinA, &foreign, "v/" + vinA + "/telemetry", false},
		{"no certificate, no token", vinA, nil, "v/" + vinA + "/telemetry", false},
	} {
		got, out, err := delivered(t, c.clientID, c.cert, c.topic, "mosquitto_pub "+c.name)
		if got != c.ok {
			t.Errorf("%s: delivered=%v, want %v (mosquitto_pub: %v)\n%s", c.name, got, c.ok, err, out)
		}
		if c.name == "B's certificate as A" && !strings.Contains(out, "not authorised") {
			t.Errorf("%s: mosquitto_pub does not say not authorised:\n%s", c.name, out)
		}
	}

	t.Run("subscribe", func(t *testing.T) {
		out, wait := background(t, "/usr/bin/mosquitto_sub",
			append(w.mosquittoTLSArgs(t, cb.tlsAddr, vinA, &certA), "-q", "1", "-t", "v/"+vinA+"/cmd", "-C", "1", "-W", "8")...)
		testutil.Eventually(t, waitFor, func() error {
			cl, ok := cb.b.Server().Clients.Get(vinA)
			if !ok || cl.Closed() {
				return errors.New("mosquitto_sub not connected yet")
			}
			if _, ok := cl.State.Subscriptions.Get("v/" + vinA + "/cmd"); !ok {
				return errors.New("mosquitto_sub not subscribed yet")
			}
			return nil
		})
		publish(t, gw, "v/"+vinA+"/cmd", 1, "lock-by-gateway")
		if err := wait(); err != nil || !out.contains("lock-by-gateway") {
			t.Fatalf("mosquitto_sub with A's certificate: %v\n%s", err, out.String())
		}
		o, _ := run(t, "/usr/bin/mosquitto_sub", append(w.mosquittoTLSArgs(t, cb.tlsAddr, vinA, &certA), "-d", "-t", "v/"+vinB+"/cmd", "-C", "1", "-W", "3")...)
		if !strings.Contains(o, "All subscription requests were denied") {
			t.Errorf("mosquitto_sub to B's cmd with A's certificate:\n%s", o)
		}
	})

	t.Run("retired after reissue", func(t *testing.T) {
		ret.set(vinA, "kid.a2")
		out, err := run(t, "/usr/bin/mosquitto_pub", append(w.mosquittoTLSArgs(t, cb.tlsAddr, vinA, &certA), "-t", "v/"+vinA+"/telemetry", "-m", "old")...)
		if err == nil || !strings.Contains(out, "not authorised") {
			t.Errorf("mosquitto_pub with the retired certificate: %v\n%s", err, out)
		}
		certA2 := issueCert(t, w.ca, w.dir, vinA, "kid.a2")
		if got, out, err := delivered(t, vinA, &certA2, "v/"+vinA+"/telemetry", "new certificate"); !got {
			t.Errorf("the new certificate: not delivered (%v)\n%s", err, out)
		}
	})
}

func (w *certWorld) tokenFor(t *testing.T, sub string, role protocol.Role) string {
	t.Helper()
	tok, _, err := w.issuer.Issue(sub, role, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestDeviceCertRetiredAcrossStandaloneRestart: the standalone broker learns from the
// gateway's signed car token that a car's credentials were reissued; restarted with the
// gateway away, it still refuses the old certificate (mosquitto_pub) and admits the new one.
func TestDeviceCertRetiredAcrossStandaloneRestart(t *testing.T) {
	t.Parallel()
	needTool(t, "/usr/bin/mosquitto_pub")
	w := newCertWorld(t)
	state := filepath.Join(t.TempDir(), "state.json")
	_, oldJTI, _, err := w.issuer.IssueID(vinA, protocol.RoleVehicle, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, newJTI, _, err := w.issuer.IssueID(vinA, protocol.RoleVehicle, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	oldCert := issueCert(t, w.ca, w.dir, vinA, oldJTI)
	newCert := issueCert(t, w.ca, w.dir, vinA, newJTI)
	pub := func(cb *certBroker, c *carCert) (string, error) {
		t.Helper()
		out, err := run(t, "/usr/bin/mosquitto_pub", append(w.mosquittoTLSArgs(t, cb.tlsAddr, vinA, c), "-t", "v/"+vinA+"/telemetry", "-m", "x")...)
		waitGoneB(t, cb.b, vinA)
		return out, err
	}

	cb := w.start(t, nil, state)
	if out, err := pub(cb, &oldCert); err != nil {
		t.Fatalf("before the reissue: %v\n%s", err, out)
	}
	env, err := w.signer.Seal(protocol.CarToken{V: protocol.Version, VIN: vinA, JTI: newJTI, IssuedAtMs: w.clock.Now().UnixMilli()})
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := json.Marshal(env)
	gw := mustPaho(t, "tcp://"+cb.b.MQTTAddr(), creds{"gateway", "gateway", w.tokenFor(t, "gateway", protocol.RoleGateway)}, nil)
	if tok := gw.Publish(protocol.CarTokenPrefix+vinA, 1, true, msg); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("publish the car token: %v", tok.Error())
	}
	testutil.Eventually(t, waitFor, func() error {
		if _, err := w.dialCert(t, cb.tlsAddr, &oldCert, creds{clientID: vinA}); err == nil {
			waitGoneB(t, cb.b, vinA)
			return errors.New("the retired certificate is still admitted")
		}
		return nil
	})
	gw.Disconnect(50)
	if err := cb.b.Close(); err != nil {
		t.Fatal(err)
	}

	cb = w.start(t, nil, state)
	if out, err := pub(cb, &oldCert); err == nil || !strings.Contains(out, "not authorised") {
		t.Errorf("after a restart, the retired certificate: %v\n%s", err, out)
	}
	if !cb.logs.contains("certificate retired") {
		t.Error("the log does not say the certificate was retired")
	}
	if out, err := pub(cb, &newCert); err != nil {
		t.Errorf("after a restart, the new certificate: %v\n%s", err, out)
	}
}

// pahoTLSScript is pahoScript with TLS: three more leading arguments, the server CA file and
// the client certificate and key files ("" for none). A TLS failure prints "tls error".
var pahoTLSScript = strings.NewReplacer(
	"host, port, proto, cid, user, password = sys.argv[1:7]\nactions = sys.argv[7:]",
	"cafile, certfile, keyfile = sys.argv[1:4]\nhost, port, proto, cid, user, password = sys.argv[4:10]\nactions = sys.argv[10:]",
	"c.connect(host, int(port), 30)",
	"c.tls_set(ca_certs=cafile, certfile=certfile or None, keyfile=keyfile or None)\n"+
		"try:\n    c.connect(host, int(port), 30)\nexcept (OSError, ValueError) as e:\n    print(\"tls error\", e); sys.exit(0)",
).Replace(pahoScript)

func (w *certWorld) runPahoTLS(t *testing.T, addr, proto string, c *carCert, cr creds, actions ...string) string {
	t.Helper()
	h, p := hostPort(t, addr)
	certFile, keyFile := "", ""
	if c != nil {
		certFile, keyFile = c.certFile, c.keyFile
	}
	args := append([]string{"-c", pahoTLSScript, w.serverCAFile, certFile, keyFile, h, p, proto, cr.clientID, cr.username, cr.password}, actions...)
	out, err := run(t, "/usr/bin/python3", args...)
	if err != nil {
		// With TLS 1.3 the server refuses a client certificate after the client's handshake
		// is done: paho then sees the alert while it waits for the CONNACK.
		return out + "exit " + err.Error() + "\n"
	}
	return out
}

// TestDeviceCertPythonPaho: python paho's tls_set with a device certificate, the same way.
func TestDeviceCertPythonPaho(t *testing.T) {
	t.Parallel()
	needPythonPaho(t)
	if !strings.Contains(pahoTLSScript, "tls_set") || !strings.Contains(pahoTLSScript, "sys.argv[4:10]") {
		t.Fatal("pahoTLSScript no longer matches pahoScript")
	}
	w := newCertWorld(t)
	cb := w.start(t, nil, "")
	ret := &retirements{current: map[string]string{}}
	cb.b.Auth().SetRetired(ret.retired)
	certA := issueCert(t, w.ca, w.dir, vinA, "kid.a1")
	certB := issueCert(t, w.ca, w.dir, vinB, "kid.b1")
	other, _, err := devicecert.LoadOrCreate(t.TempDir(), w.clock)
	if err != nil {
		t.Fatal(err)
	}
	foreign := issueCert(t, other, w.dir, vinA, "kid.a1")

	for _, proto := range []string{"311", "5"} {
		refused := "128"
		if proto == "5" {
			refused = "135"
		}
		out := w.runPahoTLS(t, cb.tlsAddr, proto, &certA, creds{clientID: vinA}, "sub:v/"+vinA+"/cmd", "sub:v/"+vinB+"/cmd")
		for _, want := range []string{"connack 0\n", "suback v/" + vinA + "/cmd 1\n", "suback v/" + vinB + "/cmd " + refused + "\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("MQTT %s, A's certificate: output lacks %q:\n%s", proto, want, out)
			}
		}
		waitGoneB(t, cb.b, vinA)
		out = w.runPahoTLS(t, cb.tlsAddr, proto, &certB, creds{clientID: vinB}, "sub:v/"+vinB+"/cmd", "sub:v/"+vinA+"/cmd")
		for _, want := range []string{"connack 0\n", "suback v/" + vinB + "/cmd 1\n", "suback v/" + vinA + "/cmd " + refused + "\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("MQTT %s, B's certificate: output lacks %q:\n%s", proto, want, out)
			}
		}
		waitGoneB(t, cb.b, vinB)
		if out := w.runPahoTLS(t, cb.tlsAddr, proto, &foreign, creds{clientID: vinA}); strings.Contains(out, "connack 0") ||
			!strings.Contains(strings.ToLower(out), "unknown ca") {
			t.Errorf("MQTT %s, certificate of another CA admitted:\n%s", proto, out)
		}
	}

	ret.set(vinA, "kid.a2")
	if out := w.runPahoTLS(t, cb.tlsAddr, "311", &certA, creds{clientID: vinA}); !strings.Contains(out, "connack 5\n") {
		t.Errorf("retired certificate:\n%s", out)
	}
}

// peerCertificates finds the client's certificate through the connections that wrap a TLS
// connection (WebSocket, the accept guard), and none on a plain one.
func TestPeerCertificatesThroughWrappers(t *testing.T) {
	t.Parallel()
	w := newCertWorld(t)
	car := issueCert(t, w.ca, w.dir, vinA, "kid.a1")
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	srv := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{w.serverCert}, ClientAuth: tls.RequireAnyClientCert})
	cli := tls.Client(b, &tls.Config{RootCAs: w.serverCAs, ServerName: "127.0.0.1", Certificates: []tls.Certificate{car.pair}})
	errc := make(chan error, 1)
	go func() { errc <- cli.Handshake() }()
	if err := srv.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for name, conn := range map[string]net.Conn{
		"tls":               srv,
		"websocket":         &wsConn{Conn: srv},
		"guarded":           &guardedConn{Conn: srv},
		"websocket,guarded": &wsConn{Conn: &guardedConn{Conn: srv}},
	} {
		if got := peerCertificates(conn); len(got) != 1 || devicecert.SerialHex(got[0].SerialNumber) != car.serial {
			t.Errorf("%s: %d certificates", name, len(got))
		}
	}
	if got := peerCertificates(a); got != nil {
		t.Errorf("plain connection: %d certificates", len(got))
	}
}

// TestReloadTLSRenewsTheDeviceCA: with TLS files and a client CA file (the standalone broker's
// --client-ca), a reload after the file was replaced by another device CA admits that CA's
// certificates (the listener and the auth hook both trust it) and no longer the old CA's.
func TestReloadTLSRenewsTheDeviceCA(t *testing.T) {
	t.Parallel()
	w := newCertWorld(t)
	server := localCA(t)
	clientCA := filepath.Join(t.TempDir(), devicecert.CertFile)
	if err := os.WriteFile(clientCA, w.ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	f := startBroker(t, func(c *Config) {
		c.TLSMQTTAddr, c.TLSCert, c.TLSKey, c.ClientCA = "127.0.0.1:0", server.Files.Cert, server.Files.Key, clientCA
	})
	next, _, err := devicecert.LoadOrCreate(t.TempDir(), w.clock)
	if err != nil {
		t.Fatal(err)
	}
	oldCert, newCert := issueCert(t, w.ca, w.dir, vinA, "kid.a1"), issueCert(t, next, w.dir, vinA, "kid.a1")
	connect := func(c carCert) error {
		cl, err := dialPaho(t, "tls://"+f.b.TLSMQTTAddr(), creds{clientID: vinA}, func(o *paho.ClientOptions) {
			cfg, err := tlsconf.ClientConfig(server.CA)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{c.pair}
			o.SetTLSConfig(cfg)
		})
		if err == nil {
			cl.Disconnect(50)
			waitGoneB(t, f.b, vinA)
		}
		return err
	}
	if err := connect(oldCert); err != nil {
		t.Fatalf("a certificate of the device CA in --client-ca: %v", err)
	}
	if err := connect(newCert); err == nil {
		t.Fatal("a certificate of another CA was admitted")
	}

	if err := os.WriteFile(clientCA, next.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.b.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if err := connect(newCert); err != nil {
		t.Errorf("after the reload, a certificate of the new device CA: %v", err)
	}
	if err := connect(oldCert); err == nil {
		t.Error("after the reload, a certificate of the old device CA was admitted")
	}

	// A broken client CA file changes nothing.
	if err := os.WriteFile(clientCA, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.b.ReloadTLS(); err == nil {
		t.Error("a broken client CA file was loaded")
	}
	if err := connect(newCert); err != nil {
		t.Errorf("after a failed reload: %v", err)
	}
}
