package mqttc

import (
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// eventually polls f until it returns nil or timeout passes.
func eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var discard = slog.New(slog.DiscardHandler)

// brokerConfig shapes a test broker.
type brokerConfig struct {
	addr   string    // "" = 127.0.0.1:0
	auth   mqtt.Hook // nil = auth.AllowHook (tests only: the real hooks are the broker package's)
	writes int32     // MaximumClientWritesPending; 0 = 1024, the project default
}

// testBroker is a real mochi broker on loopback with the inline client enabled.
type testBroker struct {
	*mqtt.Server
	addr string
	once sync.Once
}

// URL is the broker's address for paho.
func (b *testBroker) URL() string { return "tcp://" + b.addr }

// Stop closes the broker; mochi's Close may only run once.
func (b *testBroker) Stop() { b.once.Do(func() { _ = b.Server.Close() }) }

// startBroker starts a test broker; it is stopped at the end of the test.
func startBroker(t testing.TB, c brokerConfig) *testBroker {
	t.Helper()
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 1024
	if c.writes != 0 {
		caps.MaximumClientWritesPending = c.writes
	}
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: discard})
	hook := c.auth
	if hook == nil {
		hook = new(auth.AllowHook)
	}
	if err := srv.AddHook(hook, nil); err != nil {
		t.Fatal(err)
	}
	addr := c.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "t", Address: addr})
	if err := srv.AddListener(tcp); err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	b := &testBroker{Server: srv, addr: tcp.Address()}
	t.Cleanup(b.Stop)
	return b
}

// denyHook refuses every connection, as the real token hook does for a bad token.
type denyHook struct{ mqtt.HookBase }

func (h *denyHook) ID() string           { return "deny" }
func (h *denyHook) Provides(b byte) bool { return b == mqtt.OnConnectAuthenticate }
func (h *denyHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool {
	return false
}

// goroutineBaseline returns a check that every goroutine started after it has ended.
func goroutineBaseline(t testing.TB) func() {
	t.Helper()
	before := runtime.NumGoroutine()
	return func() {
		t.Helper()
		eventually(t, 5*time.Second, func() error {
			if n := runtime.NumGoroutine(); n > before {
				return fmt.Errorf("%d goroutines, %d before", n, before)
			}
			return nil
		})
	}
}
