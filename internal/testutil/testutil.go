// Package testutil holds the helpers every package's tests share: polling for a condition
// (nats-server's checkFor), a buffer another goroutine writes, a free loopback address, and a
// real mochi broker on a loopback port.
// The project's own broker with its hooks is pkg/broker's; a whole gateway is gateway/harness's.
package testutil

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// Eventually calls fn until it returns nil, every 10 ms; if timeout passes first, it fails the
// test with fn's last error.
func Eventually(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Buffer collects what another goroutine writes (a command's output, a log) while the test
// reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// EventuallyTrue is Eventually for a condition that has nothing to say when it does not hold.
func EventuallyTrue(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	Eventually(t, timeout, func() error {
		if !cond() {
			return errors.New("condition not met")
		}
		return nil
	})
}

// FreeAddr is a loopback HOST:PORT that was free a moment ago, for a server that must be
// started again on the address it had (a restart test); a server started once listens on
// 127.0.0.1:0 instead.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// MochiOptions shape a test broker.
type MochiOptions struct {
	// Addr is where it listens; "" means 127.0.0.1:0.
	Addr string
	// Hooks are added in order. With no hook that provides OnConnectAuthenticate mochi admits
	// no one; auth.AllowHook admits everyone (tests only: the real hooks are pkg/broker's).
	Hooks []mqtt.Hook
	// WritesPending is mochi's MaximumClientWritesPending; 0 means 1024, the project's default.
	WritesPending int32
	// BeforeServe, when set, runs before the broker admits anyone (to subscribe without
	// missing a message).
	BeforeServe func(*mqtt.Server)
}

// Mochi is a real mochi broker on loopback with the inline client enabled.
type Mochi struct {
	*mqtt.Server
	// Addr is the HOST:PORT it listens on.
	Addr string
	once sync.Once
}

// URL is the broker's address for paho.
func (m *Mochi) URL() string { return "tcp://" + m.Addr }

// Stop closes the broker before the test ends; mochi's Close may run only once, so Stop may be
// called any number of times.
func (m *Mochi) Stop() { m.once.Do(func() { _ = m.Server.Close() }) }

// StartMochi starts a test broker; the test's cleanup stops it.
func StartMochi(t testing.TB, o MochiOptions) *Mochi {
	t.Helper()
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 1024
	if o.WritesPending != 0 {
		caps.MaximumClientWritesPending = o.WritesPending
	}
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: slog.New(slog.DiscardHandler)})
	for _, h := range o.Hooks {
		if err := srv.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	addr := o.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "t", Address: addr})
	if err := srv.AddListener(tcp); err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	if o.BeforeServe != nil {
		o.BeforeServe(srv)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	m := &Mochi{Server: srv, Addr: tcp.Address()}
	t.Cleanup(m.Stop)
	return m
}
