package broker

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/internal/testutil"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
)

// Fixture identities.
const (
	vinA   = "WVWZZZ1JZXW000001"
	vinB   = "WVWZZZ1JZXW000002"
	userX  = "xavier"
	userY  = "yvonne"
	gwSub  = "gateway"
	admSub = "ops"
)

const waitFor = 5 * time.Second // bound of every network wait in these tests

// newTestClock is a fake clock, at the time the test starts, shared by the broker and the
// token issuer.
func newTestClock() *clocktest.Fake { return clocktest.New(time.Now()) }

// logBuffer holds a test's log lines; they are printed only if the test fails.
type logBuffer struct{ testutil.Buffer }

func (l *logBuffer) contains(s string) bool { return strings.Contains(l.String(), s) }

func newLogBuffer(t testing.TB) *logBuffer {
	l := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("broker log:\n%s", l.String())
		}
	})
	return l
}

// testLogger logs at debug level into a buffer printed only if the test fails.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(newLogBuffer(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fixture is a running broker and the gateway key that signs tokens it trusts.
type fixture struct {
	b      *Broker
	logs   *logBuffer
	signer *sign.Signer
	issuer *token.Issuer
	clock  *clocktest.Fake
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.MQTTAddr = "127.0.0.1:0"
	cfg.WSAddr = "127.0.0.1:0"
	return cfg
}

// startBroker runs a broker on loopback port 0 with a test clock; mod adjusts the config.
func startBroker(t testing.TB, mod func(*Config)) *fixture {
	t.Helper()
	signer, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	if mod != nil {
		mod(&cfg)
	}
	clock := newTestClock()
	logs := newLogBuffer(t)
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := newBroker(cfg, []*ecdsa.PublicKey{signer.Public()}, logger, clock)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return &fixture{b: b, logs: logs, signer: signer, issuer: token.NewIssuer(signer, clock), clock: clock}
}

// token issues a token for sub with role, valid for an hour on the fixture's clock.
func (f *fixture) token(t testing.TB, sub string, role protocol.Role) string {
	t.Helper()
	tok, _, err := f.issuer.Issue(sub, role, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// creds is what a client connects with.
type creds struct {
	clientID, username, password string
}

// creds returns the usual credentials of an identity: client id sub for vehicles and
// gateways, sub+"-"+suffix for apps and admins.
func (f *fixture) creds(t testing.TB, sub string, role protocol.Role, suffix string) creds {
	cid := sub
	if role == protocol.RoleApp || role == protocol.RoleAdmin {
		cid = sub + "-" + suffix
	}
	return creds{clientID: cid, username: sub, password: f.token(t, sub, role)}
}

// dialPaho connects a paho (MQTT 3.1.1) client without reconnects; it returns the connect
// error instead of failing, for refusal tests. The client is disconnected at cleanup.
func dialPaho(t testing.TB, url string, c creds, mod func(*paho.ClientOptions)) (paho.Client, error) {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker(url).
		SetClientID(c.clientID).
		SetUsername(c.username).SetPassword(c.password).
		SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(waitFor).SetWriteTimeout(waitFor).
		SetCleanSession(true)
	if mod != nil {
		mod(opts)
	}
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	if !tok.WaitTimeout(waitFor) {
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { cl.Disconnect(50) })
	return cl, nil
}

func mustPaho(t testing.TB, url string, c creds, mod func(*paho.ClientOptions)) paho.Client {
	t.Helper()
	cl, err := dialPaho(t, url, c, mod)
	if err != nil {
		t.Fatalf("connect %s: %v", c.clientID, err)
	}
	return cl
}

func (f *fixture) tcpURL() string { return "tcp://" + f.b.MQTTAddr() }
func (f *fixture) wsURL() string  { return "ws://" + f.b.WSAddr() + "/mqtt" }

// subscribe subscribes and returns the SUBACK code (0x80 is a refusal).
func subscribe(t testing.TB, cl paho.Client, filter string, h paho.MessageHandler) byte {
	t.Helper()
	tok := cl.Subscribe(filter, 1, h)
	if !tok.WaitTimeout(waitFor) {
		t.Fatalf("subscribe %q timed out", filter)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("subscribe %q: %v", filter, err)
	}
	// One filter, one result (keyed by the filter, minus a "$share/GROUP/" prefix).
	res := tok.(*paho.SubscribeToken).Result()
	if len(res) != 1 {
		t.Fatalf("subscribe %q: results %v", filter, res)
	}
	for _, code := range res {
		return code
	}
	panic("unreachable")
}

func publish(t testing.TB, cl paho.Client, topic string, qos byte, payload string) {
	t.Helper()
	tok := cl.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(waitFor) {
		t.Fatalf("publish %q timed out", topic)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish %q: %v", topic, err)
	}
}

// recorder collects the messages a client receives.
type recorder struct {
	mu   sync.Mutex
	msgs []string // "topic payload"
}

func (r *recorder) handle(_ paho.Client, m paho.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m.Topic()+" "+string(m.Payload()))
	r.mu.Unlock()
}

func (r *recorder) has(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if m == s {
			return true
		}
	}
	return false
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

// rawConnect sends one CONNECT (protocol version 4 or 5) and returns the CONNACK's return
// code, or an error if the broker closed the connection without one.
func rawConnect(addr string, version byte, c creds, will *packets.Packet) (byte, error) {
	conn, err := net.DialTimeout("tcp", addr, waitFor)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	return rawConnectWill(conn, version, c, will)
}

// rawConnectOn sends CONNECT on an open connection and returns the CONNACK's code.
func rawConnectOn(conn net.Conn, version byte, c creds) (byte, error) {
	return rawConnectWill(conn, version, c, nil)
}

func rawConnectWill(conn net.Conn, version byte, c creds, will *packets.Packet) (byte, error) {
	_ = conn.SetDeadline(time.Now().Add(waitFor))
	if _, err := conn.Write(connectPacket(version, c, will)); err != nil {
		return 0, err
	}
	return readConnack(conn)
}

// connectPacket encodes a CONNECT of protocol version 4 or 5.
func connectPacket(version byte, c creds, will *packets.Packet) []byte {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        30,
			ClientIdentifier: c.clientID,
			UsernameFlag:     c.username != "",
			Username:         []byte(c.username),
			PasswordFlag:     c.password != "",
			Password:         []byte(c.password),
		},
	}
	if will != nil {
		pk.Connect.WillFlag = true
		pk.Connect.WillTopic = will.TopicName
		pk.Connect.WillPayload = will.Payload
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		panic(err) // a fixture bug
	}
	return buf.Bytes()
}

// readConnack reads one packet and returns the CONNACK's return code.
func readConnack(conn net.Conn) (byte, error) {
	r := bufio.NewReader(conn)
	first, err := r.ReadByte()
	if err != nil {
		return 0, fmt.Errorf("no CONNACK: %w", err)
	}
	if first>>4 != packets.Connack {
		return 0, fmt.Errorf("first packet type %d, want CONNACK", first>>4)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return 0, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, err
	}
	if len(body) < 2 {
		return 0, fmt.Errorf("short CONNACK % x", body)
	}
	return body[1], nil
}
