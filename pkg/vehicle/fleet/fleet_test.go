package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/vehicletest"
)

// testAuth admits every client except those presenting the password "bad". Tests only: the
// real authentication is the broker package's token hook.
type testAuth struct{ mqtt.HookBase }

func (h *testAuth) ID() string { return "test-auth" }

func (h *testAuth) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

func (h *testAuth) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return string(pk.Connect.Password) != "bad"
}

func (h *testAuth) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool { return true }

// startBroker runs a mochi broker on a loopback port with the inline client enabled.
func startBroker(t *testing.T) (*mqtt.Server, string) {
	t.Helper()
	srv, url, _ := startBrokerAt(t, "127.0.0.1:0", nil)
	return srv, url
}

// startBrokerAt runs a broker on addr (to restart one on the port it had); before, when set,
// runs before the broker admits anyone (to subscribe without missing a message). stop closes
// the broker before the test ends.
func startBrokerAt(t *testing.T, addr string, before func(*mqtt.Server)) (srv *mqtt.Server, url string, stop func()) {
	t.Helper()
	m := testutil.StartMochi(t, testutil.MochiOptions{Addr: addr, Hooks: []mqtt.Hook{new(testAuth)}, BeforeServe: before})
	return m.Server, m.URL(), m.Stop
}

// recorder keeps what the broker saw, per topic.
type recorder struct {
	mu   sync.Mutex
	msgs map[string][]packets.Packet
}

func (r *recorder) record(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.msgs == nil {
		r.msgs = make(map[string][]packets.Packet)
	}
	r.msgs[pk.TopicName] = append(r.msgs[pk.TopicName], pk)
}

func (r *recorder) get(topic string) []packets.Packet {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]packets.Packet(nil), r.msgs[topic]...)
}

func TestFleetAgainstBroker(t *testing.T) {
	srv, url := startBroker(t)
	rec := &recorder{}
	for i, f := range []string{"v/+/status", "v/+/telemetry", "v/+/result", "v/+/keys/ack"} {
		if err := srv.Subscribe(f, i+1, rec.record); err != nil {
			t.Fatal(err)
		}
	}

	gw := vehicletest.NewGatewayAt(t, time.Now())
	vins := []string{"WVWZZZ1JZXW000011", "WVWZZZ1JZXW000012", "WVWZZZ1JZXW000013"}
	var creds []protocol.Credentials
	for _, v := range vins {
		creds = append(creds, gw.Creds(t, v))
		// The gateway's retained whitelist waits for the car.
		if err := srv.Publish(protocol.VehicleTopic(v, protocol.SuffixKeys), gw.Whitelist(t, vehicletest.WhitelistSpec{VIN: v, Version: 3}), true, 1); err != nil {
			t.Fatal(err)
		}
	}
	bad := gw.Creds(t, "WVWZZZ1JZXW000666")
	bad.Token = "bad"
	creds = append(creds, bad)

	st := vehicletest.OpenStore(t, t.TempDir())
	logBuf := &testutil.Buffer{} // shown only if the test fails
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(logBuf.String())
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type outcome struct {
		st  Stats
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		s, err := Run(ctx, Config{
			BrokerURL:         url,
			Creds:             creds,
			Store:             st,
			TelemetryInterval: 50 * time.Millisecond,
			ConnectRate:       50,
			Logger:            slog.New(slog.NewTextHandler(logBuf, nil)),
		})
		done <- outcome{s, err}
	}()

	lastStatus := func(vin string) (protocol.VehicleStatus, packets.Packet, error) {
		msgs := rec.get(protocol.VehicleTopic(vin, protocol.SuffixStatus))
		if len(msgs) == 0 {
			return protocol.VehicleStatus{}, packets.Packet{}, errors.New("no status yet")
		}
		var s protocol.VehicleStatus
		err := json.Unmarshal(msgs[len(msgs)-1].Payload, &s)
		return s, msgs[len(msgs)-1], err
	}

	// Every good car comes online, acknowledges its whitelist, and publishes telemetry with
	// rising seq.
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, v := range vins {
			if s, _, err := lastStatus(v); err != nil || s.Status != protocol.StatusOnline {
				return fmt.Errorf("%s status %+v %v", v, s, err)
			}
			acks := rec.get(protocol.VehicleTopic(v, protocol.SuffixKeysAck))
			if len(acks) == 0 {
				return fmt.Errorf("%s acknowledged no whitelist", v)
			}
			var ack protocol.KeysAck
			if err := json.Unmarshal(acks[0].Payload, &ack); err != nil || ack.VIN != v || ack.Version != 3 {
				t.Fatalf("%s: ack %s", v, acks[0].Payload)
			}
			tm := rec.get(protocol.VehicleTopic(v, protocol.SuffixTelemetry))
			if len(tm) < 3 {
				return fmt.Errorf("%s sent %d telemetry messages", v, len(tm))
			}
			var prev uint64
			for _, pk := range tm {
				var m protocol.Telemetry
				if err := json.Unmarshal(pk.Payload, &m); err != nil {
					t.Fatalf("telemetry %q: %v", pk.Payload, err)
				}
				if m.Seq <= prev {
					t.Fatalf("%s: seq %d after %d", v, m.Seq, prev)
				}
				prev = m.Seq
				if _, ok := m.Signals[protocol.VSSLatitude]; !ok {
					t.Fatalf("telemetry without position: %s", pk.Payload)
				}
			}
		}
		return nil
	})

	// The online status is retained: a late subscriber gets it.
	retained := &recorder{}
	if err := srv.Subscribe("v/+/status", 10, retained.record); err != nil {
		t.Fatal(err)
	}
	for _, v := range vins {
		got := retained.get(protocol.VehicleTopic(v, protocol.SuffixStatus))
		if len(got) != 1 || !got[0].FixedHeader.Retain || !strings.Contains(string(got[0].Payload), `"online"`) {
			t.Fatalf("%s: retained status %v", v, got)
		}
	}
	if _, _, err := lastStatus(bad.VIN); err == nil {
		t.Error("the refused car published a status")
	}

	// A command published to one car is executed and answered.
	cmd := vehicletest.NewCommand(vins[1], protocol.ActionUnlock, time.Now())
	if err := srv.Publish(protocol.VehicleTopic(vins[1], protocol.SuffixCmd), gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: cmd}), false, 1); err != nil {
		t.Fatal(err)
	}
	// And a forged one is refused.
	forged := vehicletest.NewCommand(vins[2], protocol.ActionUnlock, time.Now())
	other := vehicletest.NewGateway(t)
	if err := srv.Publish(protocol.VehicleTopic(vins[2], protocol.SuffixCmd), other.CloudCommand(t, vehicletest.CommandSpec{Cmd: forged}), false, 1); err != nil {
		t.Fatal(err)
	}
	result := func(vin string) (protocol.Result, error) {
		msgs := rec.get(protocol.VehicleTopic(vin, protocol.SuffixResult))
		if len(msgs) == 0 {
			return protocol.Result{}, errors.New("no result yet")
		}
		var r protocol.Result
		return r, json.Unmarshal(msgs[0].Payload, &r)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		r, err := result(vins[1])
		if err != nil {
			return err
		}
		if r.ID != cmd.ID || r.Status != protocol.ResultExecuted || r.State[protocol.VSSIsLocked] != false {
			t.Fatalf("result %+v", r)
		}
		r, err = result(vins[2])
		if err != nil {
			return err
		}
		if r.ID != forged.ID || r.Status != protocol.ResultRejected || r.Reason != protocol.ReasonSignatureInvalid {
			t.Fatalf("result of forged command %+v", r)
		}
		return nil
	})

	cancel()
	var out outcome
	select {
	case out = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if out.err != nil {
		t.Fatal(out.err)
	}
	s := out.st
	if s.Cars != 4 || s.Connected != 3 || s.Failed != 1 || s.Executed != 1 || s.Rejected != 1 || s.TelemetrySent == 0 || s.Whitelists != 3 {
		t.Errorf("stats %+v", s)
	}
	// A clean stop says offline (the will is only for crashes), and persists the state. mochi
	// acknowledges a QoS 1 publish before it delivers it, so the subscriber may see it a
	// moment after Run returned.
	testutil.Eventually(t, 5*time.Second, func() error {
		for _, v := range vins {
			if st, _, _ := lastStatus(v); st.Status != protocol.StatusOffline {
				return fmt.Errorf("%s: last status %q after stop", v, st.Status)
			}
		}
		return nil
	})
	for _, v := range vins {
		kept := srv.Topics.Messages(protocol.VehicleTopic(v, protocol.SuffixStatus))
		if len(kept) != 1 || !strings.Contains(string(kept[0].Payload), `"offline"`) {
			t.Errorf("%s: retained status after stop %v", v, kept)
		}
	}
	rec1, found, err := st.LoadCar(vins[1])
	var state1 vehicle.State
	if err == nil && found {
		err = json.Unmarshal(rec1.State, &state1)
	}
	if err != nil || !found || state1.Locked {
		t.Errorf("stored state of the unlocked car: %+v found=%v err=%v", state1, found, err)
	}
	// What vehicle-sim's progress line reports of the failure (its own test checks the line).
	if want := bad.VIN + ": broker refused the credentials"; !strings.HasPrefix(s.FirstFailure, want) {
		t.Errorf("first failure %q, want %q…", s.FirstFailure, want)
	}
}

func TestFleetAllRefused(t *testing.T) {
	_, url := startBroker(t)
	gw := vehicletest.NewGateway(t)
	c := gw.Creds(t, vehicletest.VIN)
	c.Token = "bad"
	st := vehicletest.OpenStore(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// With every car refused there is nothing to run: Run returns by itself.
	_, err := Run(ctx, Config{BrokerURL: url, Creds: []protocol.Credentials{c}, Store: st})
	if !errors.Is(err, ErrNoCarConnected) || !strings.Contains(err.Error(), "refused the credentials") {
		t.Fatalf("got %v, want ErrNoCarConnected naming the refusal", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run waited for the context")
	}
}
