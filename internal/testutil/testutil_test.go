package testutil

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestEventuallyPollsUntilTheConditionHolds(t *testing.T) {
	calls := 0
	Eventually(t, 5*time.Second, func() error {
		if calls++; calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Fatalf("%d calls, want 3", calls)
	}
}

// FreeAddr's port can be listened on again.
func TestFreeAddrIsFree(t *testing.T) {
	ln, err := net.Listen("tcp", FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
}

// A test broker delivers to the inline client, and Stop may be called before the cleanup's.
func TestStartMochi(t *testing.T) {
	got := make(chan string, 1)
	m := StartMochi(t, MochiOptions{Hooks: []mqtt.Hook{new(auth.AllowHook)}, BeforeServe: func(s *mqtt.Server) {
		_ = s.Subscribe("t/#", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) { got <- string(pk.Payload) })
	}})
	if m.URL() != "tcp://"+m.Addr {
		t.Fatalf("URL %s for %s", m.URL(), m.Addr)
	}
	if err := m.Publish("t/x", []byte("hello"), false, 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	select {
	case p := <-got:
		if p != "hello" {
			t.Fatalf("got %q", p)
		}
	case <-ctx.Done():
		t.Fatal("no message")
	}
	m.Stop()
	m.Stop()
}
