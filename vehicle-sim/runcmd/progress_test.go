package runcmd

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/fleet"
)

// refuseBad admits every client except those presenting the password "bad". Tests only: the
// real authentication is the broker package's token hook.
type refuseBad struct{ mqtt.HookBase }

func (h *refuseBad) ID() string { return "refuse-bad" }

func (h *refuseBad) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

func (h *refuseBad) OnConnectAuthenticate(_ *mqtt.Client, pk packets.Packet) bool {
	return string(pk.Connect.Password) != "bad"
}

func (h *refuseBad) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// TestProgressReportsFailures: a fleet with a car the broker refuses reports how many cars
// connected, that one failed and why, and, once stopped, what the fleet did.
func TestProgressReportsFailures(t *testing.T) {
	b := testutil.StartMochi(t, testutil.MochiOptions{Hooks: []mqtt.Hook{new(refuseBad)}})

	gw, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	gwKey, err := sign.EncodePublic(gw.Public())
	if err != nil {
		t.Fatal(err)
	}
	var creds []protocol.Credentials
	for i, token := range []string{"good", "bad"} {
		vin := vinN(i + 1)
		creds = append(creds, protocol.Credentials{VIN: vin, ClientID: vin, Username: vin, Token: token, GatewayKey: gwKey})
	}
	st, err := carstore.Open(filepath.Join(t.TempDir(), carstore.File))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f, err := fleet.New(fleet.Config{BrokerURL: b.URL(), Creds: creds, Store: st,
		TelemetryInterval: 50 * time.Millisecond, ConnectRate: 50})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &testutil.Buffer{}
	done := make(chan error, 1)
	go func() {
		_, err := runWithProgress(ctx, f, out, time.Second)
		done <- err
	}()
	// Both cars have had their answer from the broker (one admitted, one refused) before the
	// fleet is stopped: stopping it as soon as the good car connected raced the bad car's
	// refusal, and then there was no failure to report (seen once under -race in CI).
	testutil.EventuallyTrue(t, 10*time.Second, func() bool {
		st := f.Stats()
		return st.Connected == 1 && st.Failed == 1 && strings.Contains(out.String(), "connected 1/2 cars")
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the fleet did not stop")
	}
	for _, want := range []string{"connected 1/2 cars", "1 failed", "refused the credentials", "stopped: "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, out)
		}
	}
}
