package broker

import (
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
)

func TestNewRefusesBadInput(t *testing.T) {
	t.Parallel()
	signer, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	keys := []*ecdsa.PublicKey{signer.Public()}
	if _, err := New(testConfig(), nil, nil); !errors.Is(err, ErrNoGatewayKey) {
		t.Errorf("no keys: %v, want ErrNoGatewayKey", err)
	}
	if _, err := New(testConfig(), []*ecdsa.PublicKey{nil}, nil); err == nil {
		t.Error("nil key accepted")
	}
	bad := testConfig()
	bad.MaxTopicBytes = 0
	if _, err := New(bad, keys, nil); err == nil || !strings.Contains(err.Error(), "max_topic_bytes") {
		t.Errorf("invalid config: %v", err)
	}
}

func TestLifecycle(t *testing.T) {
	signer, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	cfg := testConfig()
	cfg.ConnectTimeout = time.Hour // Close must not wait for it
	b, err := New(cfg, []*ecdsa.PublicKey{signer.Public()}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if b.MQTTAddr() != "127.0.0.1:0" {
		t.Errorf("MQTTAddr before Start = %q, want the configured one", b.MQTTAddr())
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{b.MQTTAddr(), b.WSAddr()} {
		if strings.HasSuffix(addr, ":0") {
			t.Errorf("address %q is not the bound one", addr)
		}
		c, err := net.DialTimeout("tcp", addr, waitFor)
		if err != nil {
			t.Errorf("dial %s: %v", addr, err)
			continue
		}
		c.Close()
	}
	if err := b.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	// Open connections at Close: an admitted client, and one on each listener that has not
	// sent CONNECT (or an HTTP request) yet.
	issuer := token.NewIssuer(signer, nil)
	tok, _, err := issuer.Issue(vinA, protocol.RoleVehicle, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var open []net.Conn
	for _, addr := range []string{b.MQTTAddr(), b.MQTTAddr(), b.WSAddr()} {
		c, err := net.DialTimeout("tcp", addr, waitFor)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		open = append(open, c)
	}
	if code, err := rawConnectOn(open[0], protocolV3, creds{vinA, vinA, tok}); err != nil || code != connAccepted {
		t.Fatalf("connect: %#x %v", code, err)
	}
	mqttAddr := b.MQTTAddr()
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitFor):
		t.Fatal("Close hangs on open connections")
	}
	for i, c := range open {
		_ = c.SetReadDeadline(time.Now().Add(waitFor))
		// Closed means EOF or a reset (the WebSocket listener's HTTP server may reset a
		// connection it closes); a timeout means the broker left it open.
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("connection %d not closed by the broker: %v", i, err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := b.Start(); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v, want ErrClosed", err)
	}
	if c, err := net.DialTimeout("tcp", mqttAddr, waitFor); err == nil {
		c.Close()
		t.Error("listener still accepting after Close")
	}
	// Every goroutine the broker started has ended.
	testutil.Eventually(t, waitFor, func() error {
		if n := runtime.NumGoroutine(); n > before {
			return fmt.Errorf("%d goroutines, %d before the broker", n, before)
		}
		return nil
	})

	// A broker closed before it started.
	b2, err := New(testConfig(), []*ecdsa.PublicKey{signer.Public()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestListenersCanBeDisabled(t *testing.T) {
	t.Parallel()
	f := startBroker(t, func(c *Config) { c.WSAddr = "" })
	if f.b.WSAddr() != "" {
		t.Errorf("WSAddr = %q, want empty", f.b.WSAddr())
	}
	mustPaho(t, f.tcpURL(), f.creds(t, vinA, protocol.RoleVehicle, ""), nil)

	// No network at all: the embedded gateway's inline client still works.
	g := startBroker(t, func(c *Config) { c.MQTTAddr, c.WSAddr = "", "" })
	got := make(chan string, 1)
	if err := g.b.Server().Subscribe("v/+/cmd", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		got <- string(pk.Payload)
	}); err != nil {
		t.Fatal(err)
	}
	if err := g.b.Server().Publish("v/"+vinA+"/cmd", []byte("inline"), false, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "inline" {
			t.Errorf("payload %q", p)
		}
	case <-time.After(waitFor):
		t.Fatal("inline message not delivered")
	}
}

// TestInlineGateway: the embedded gateway talks to cars through mochi's inline client, which
// the ACL does not restrict; cars are restricted as usual.
func TestInlineGateway(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	srv := f.b.Server()
	telemetry := make(chan string, 10)
	if err := srv.Subscribe("v/+/telemetry", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		telemetry <- pk.TopicName + " " + string(pk.Payload)
	}); err != nil {
		t.Fatal(err)
	}
	var rec recorder
	car := mustPaho(t, f.tcpURL(), f.creds(t, vinA, protocol.RoleVehicle, ""), nil)
	if code := subscribe(t, car, "v/"+vinA+"/cmd", rec.handle); code != subGrantedQoS1 {
		t.Fatalf("car subscribe: %#x", code)
	}
	publish(t, car, "v/"+vinA+"/telemetry", 1, "speed")
	select {
	case m := <-telemetry:
		if m != "v/"+vinA+"/telemetry speed" {
			t.Errorf("inline subscriber got %q", m)
		}
	case <-time.After(waitFor):
		t.Fatal("telemetry not delivered to the inline subscriber")
	}
	if err := srv.Publish("v/"+vinA+"/cmd", []byte("lock"), false, 1); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitFor, func() error {
		if !rec.has("v/" + vinA + "/cmd lock") {
			return errors.New("command not delivered to the car")
		}
		return nil
	})
}

// TestWebSocket: the same identities and ACL over MQTT-over-WebSocket.
func TestWebSocket(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	if _, err := dialPaho(t, f.wsURL(), creds{clientID: vinA}, nil); err == nil {
		t.Fatal("anonymous WebSocket client admitted")
	}
	gw := mustPaho(t, f.tcpURL(), f.creds(t, gwSub, protocol.RoleGateway, ""), nil)
	var gwRec, carRec recorder
	subscribe(t, gw, "v/#", gwRec.handle)

	car := mustPaho(t, f.wsURL(), f.creds(t, vinA, protocol.RoleVehicle, ""), nil)
	if code := subscribe(t, car, "v/"+vinB+"/cmd", carRec.handle); code != subRefused {
		t.Errorf("subscribe to another car over WebSocket: %#x", code)
	}
	if code := subscribe(t, car, "v/"+vinA+"/cmd", carRec.handle); code != subGrantedQoS1 {
		t.Fatalf("subscribe over WebSocket: %#x", code)
	}
	publish(t, car, "v/"+vinB+"/telemetry", 0, "forged")
	publish(t, car, "v/"+vinA+"/telemetry", 1, "real")
	publish(t, gw, "v/"+vinA+"/cmd", 1, "unlock")
	testutil.Eventually(t, waitFor, func() error {
		if !gwRec.has("v/"+vinA+"/telemetry real") || !carRec.has("v/"+vinA+"/cmd unlock") {
			return fmt.Errorf("gateway got %q, car got %q", gwRec.all(), carRec.all())
		}
		return nil
	})
	if gwRec.has("v/" + vinB + "/telemetry forged") {
		t.Error("forged telemetry delivered")
	}
}

// TestMaxPacketBytes: a packet over the limit ends the connection and is not delivered.
func TestMaxPacketBytes(t *testing.T) {
	t.Parallel()
	f := startBroker(t, func(c *Config) { c.MaxPacketBytes = protocol.MaxPayloadBytes + 1024 })
	gw := mustPaho(t, f.tcpURL(), f.creds(t, gwSub, protocol.RoleGateway, ""), nil)
	var rec recorder
	subscribe(t, gw, "v/+/telemetry", rec.handle)
	lost := make(chan struct{}, 1)
	car := mustPaho(t, f.tcpURL(), f.creds(t, vinA, protocol.RoleVehicle, ""), func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(paho.Client, error) { lost <- struct{}{} })
	})
	publish(t, car, "v/"+vinA+"/telemetry", 1, strings.Repeat("x", protocol.MaxPayloadBytes)) // fits
	car.Publish("v/"+vinA+"/telemetry", 1, false, strings.Repeat("y", protocol.MaxPayloadBytes+2048))
	select {
	case <-lost:
	case <-time.After(waitFor):
		t.Fatal("oversized packet did not end the connection")
	}
	testutil.Eventually(t, waitFor, func() error {
		if len(rec.all()) == 0 {
			return errors.New("the message that fits was not delivered")
		}
		return nil
	})
	for _, m := range rec.all() {
		if strings.Contains(m, "yyy") {
			t.Fatal("oversized message delivered")
		}
	}
}

func TestMaxClients(t *testing.T) {
	t.Parallel()
	f := startBroker(t, func(c *Config) { c.MaxClients = 1 })
	mustPaho(t, f.tcpURL(), f.creds(t, vinA, protocol.RoleVehicle, ""), nil)
	code, err := rawConnect(f.b.MQTTAddr(), protocolV3, f.creds(t, vinB, protocol.RoleVehicle, ""), nil)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0x03 { // MQTT 3.1.1 "server unavailable"
		t.Fatalf("CONNACK %#x, want 0x03", code)
	}
}

// TestLogsCarryNoSecrets: mochi logs whole packets when it refuses one; tokens (a CONNECT's
// password) and payloads (an app's TOTP code) must not reach the log.
func TestLogsCarryNoSecrets(t *testing.T) {
	t.Parallel()
	f := startBroker(t, nil)
	const totp = "918273"

	// An app publishes its command, with a TOTP code, to another user's topic at QoS 1.
	lost := make(chan struct{}, 1)
	app := mustPaho(t, f.tcpURL(), f.creds(t, userX, protocol.RoleApp, "1"), func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(paho.Client, error) { lost <- struct{}{} })
	})
	app.Publish("app/"+userY+"/cmd", 1, false, `{"v":1,"totp":"`+totp+`"}`)
	select {
	case <-lost:
	case <-time.After(waitFor):
		t.Fatal("refused QoS 1 publish did not end the connection")
	}

	// An admitted car sends a second CONNECT, token and all.
	car := f.creds(t, vinA, protocol.RoleVehicle, "")
	conn, err := net.DialTimeout("tcp", f.b.MQTTAddr(), waitFor)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if code, err := rawConnectOn(conn, protocolV3, car); err != nil || code != connAccepted {
		t.Fatalf("connect: %#x %v", code, err)
	}
	if _, err := conn.Write(connectPacket(protocolV3, car, nil)); err != nil {
		t.Fatal(err)
	}
	// A refused connect with a valid token (wrong client id).
	if code, _ := rawConnect(f.b.MQTTAddr(), protocolV3, creds{vinB, vinA, car.password}, nil); code != connRefusedV3 {
		t.Fatalf("CONNACK %#x", code)
	}

	testutil.Eventually(t, waitFor, func() error {
		if !f.logs.contains(`pk="Connect id=0"`) || !f.logs.contains(`pk="Publish id=1 topic=\"app/`+userY+`/cmd\" payload_bytes=`) {
			return errors.New("mochi has not logged both refused packets yet")
		}
		return nil
	})
	for _, secret := range []string{totp, car.password, strings.Split(car.password, ".")[2]} {
		if f.logs.contains(secret) {
			t.Errorf("secret %.12s… in the log", secret)
		}
	}
}
