package mqttc

import (
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/internal/testutil"
)

var discard = slog.New(slog.DiscardHandler)

// brokerConfig shapes a test broker.
type brokerConfig struct {
	addr   string    // "" = 127.0.0.1:0
	auth   mqtt.Hook // nil = auth.AllowHook (tests only: the real hooks are the broker package's)
	writes int32     // MaximumClientWritesPending; 0 = 1024, the project default
}

// testBroker is a real mochi broker on loopback with the inline client enabled.
type testBroker = testutil.Mochi

// startBroker starts a test broker; it is stopped at the end of the test.
func startBroker(t testing.TB, c brokerConfig) *testBroker {
	t.Helper()
	hook := c.auth
	if hook == nil {
		hook = new(auth.AllowHook)
	}
	return testutil.StartMochi(t, testutil.MochiOptions{Addr: c.addr, Hooks: []mqtt.Hook{hook}, WritesPending: c.writes})
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
		testutil.Eventually(t, 5*time.Second, func() error {
			if n := runtime.NumGoroutine(); n > before {
				return fmt.Errorf("%d goroutines, %d before", n, before)
			}
			return nil
		})
	}
}
