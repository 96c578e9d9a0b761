package phone

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
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
)

const (
	testVIN  = "WVWZZZ1JZXW000001"
	testUser = "alice"
)

// newKey makes a phone key in a temporary directory.
func newKey(t *testing.T) *sign.Signer {
	t.Helper()
	k, err := CreateKey(filepath.Join(t.TempDir(), "phone.key"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// secretForms are the encodings in which a private key could leak: its DER (SEC 1 and PKCS#8)
// and its scalar, each as base64url, base64 and hex, and the scalar in decimal.
func secretForms(t *testing.T, k *sign.Signer) []string {
	t.Helper()
	sec1, err := x509.MarshalECPrivateKey(k.Private())
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(k.Private())
	if err != nil {
		t.Fatal(err)
	}
	d, err := k.Private().Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range [][]byte{sec1, pkcs8, d} {
		out = append(out, base64.RawURLEncoding.EncodeToString(b), base64.StdEncoding.EncodeToString(b)[:40], hex.EncodeToString(b))
	}
	return append(out, k.Private().D.String())
}

// assertNoSecret fails if any of bodies contains k's private key in any of its usual forms.
func assertNoSecret(t *testing.T, k *sign.Signer, bodies ...[]byte) {
	t.Helper()
	if len(bodies) == 0 {
		t.Fatal("nothing was sent: the check would be empty")
	}
	for _, f := range secretForms(t, k) {
		for i, b := range bodies {
			if strings.Contains(string(b), f) {
				t.Fatalf("body %d contains the private key: %s", i, b)
			}
		}
	}
}

// broker is a real mochi broker on 127.0.0.1:0 that admits anyone (allow) or no one; tests only.
type broker struct {
	srv  *mqtt.Server
	addr string

	mu       sync.Mutex
	requests [][]byte // payloads published on app/+/cmd
}

func startBroker(t *testing.T, allow bool) *broker {
	t.Helper()
	var hooks []mqtt.Hook
	if allow {
		hooks = append(hooks, new(auth.AllowHook))
	}
	m := testutil.StartMochi(t, testutil.MochiOptions{Hooks: hooks})
	srv := m.Server
	b := &broker{srv: srv, addr: m.Addr}
	if err := srv.Subscribe("app/+/cmd", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		b.mu.Lock()
		b.requests = append(b.requests, append([]byte(nil), pk.Payload...))
		b.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *broker) url() string { return "tcp://" + b.addr }

func (b *broker) Requests() [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][]byte(nil), b.requests...)
}

// step is one reply the fake gateway publishes, after a pause.
type step struct {
	after time.Duration
	reply protocol.Reply
}

// answer makes the broker play the gateway: for every request, steps(command) gives the replies
// to publish on the user's reply topic, in order, each after its pause. One worker goroutine,
// stopped by the test's cleanup, publishes them (not the subscription callback itself).
func (b *broker) answer(t *testing.T, steps func(protocol.Command) []step) {
	t.Helper()
	type job struct {
		topic string
		steps []step
	}
	jobs := make(chan job, 16)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case j := <-jobs:
				for _, st := range j.steps {
					timer := time.NewTimer(st.after)
					select {
					case <-done:
						timer.Stop()
						return
					case <-timer.C:
					}
					p, _ := json.Marshal(st.reply) // a Reply always marshals
					_ = b.srv.Publish(j.topic, p, false, 1)
				}
			}
		}
	}()
	t.Cleanup(func() { close(done); wg.Wait() })
	if err := b.srv.Subscribe("app/+/cmd", 2, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		var ar protocol.AppRequest
		if protocol.Decode(pk.Payload, &ar) != nil {
			return
		}
		doc, err := ar.Command.DocBytes()
		if err != nil {
			return
		}
		var cmd protocol.Command
		if protocol.Decode(doc, &cmd) != nil {
			return
		}
		user, _, _ := protocol.ParseAppTopic(pk.TopicName)
		select {
		case jobs <- job{protocol.AppTopic(user, protocol.SuffixReply), steps(cmd)}:
		case <-done:
		}
	}); err != nil {
		t.Fatal(err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// closedAddr is a loopback address nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func testSession(brokerURL string) *Session {
	return &Session{User: testUser, Token: "t", BrokerURL: brokerURL, ClientIDPrefix: testUser + "-",
		ClientID: fmt.Sprintf("%s-%d", testUser, time.Now().UnixNano()), ExpiresAtMs: time.Now().Add(time.Hour).UnixMilli()}
}
