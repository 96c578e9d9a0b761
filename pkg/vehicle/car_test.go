package vehicle

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/vehicletest"
)

// TestHandleCommandRefusals has one case per reason a car refuses a cloud command, in the
// order of HandleCommand's checks.
func TestHandleCommandRefusals(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	cast := gw.Cast
	forger, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	valid := func(a protocol.Action) protocol.Command {
		return vehicletest.NewCommand(vehicletest.VIN, a, vehicletest.T0)
	}

	tests := []struct {
		name        string
		payload     func() []byte
		reason      protocol.Reason
		wantID      bool // the result names the command id
		noWhitelist bool // the car never received a whitelist
	}{
		{name: "not json", payload: func() []byte { return []byte("unlock please") }, reason: protocol.ReasonBadRequest},
		{name: "empty", payload: func() []byte { return nil }, reason: protocol.ReasonBadRequest},
		{name: "json null", payload: func() []byte { return []byte("null") }, reason: protocol.ReasonBadRequest},
		{name: "oversized", payload: func() []byte {
			return append([]byte(`{"v":1,"pad":"`), bytes.Repeat([]byte("a"), protocol.MaxPayloadBytes)...)
		}, reason: protocol.ReasonBadRequest},
		{name: "wrong version", payload: func() []byte {
			var m map[string]any
			json.Unmarshal(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock)}), &m)
			m["v"] = 2
			b, _ := json.Marshal(m)
			return b
		}, reason: protocol.ReasonBadRequest, wantID: true},
		{name: "no grant", payload: func() []byte {
			var m map[string]any
			json.Unmarshal(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock)}), &m)
			delete(m, "grant")
			b, _ := json.Marshal(m)
			return b
		}, reason: protocol.ReasonBadRequest, wantID: true},
		{name: "empty grant", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), NoGrant: true})
		}, reason: protocol.ReasonBadRequest, wantID: true},
		{name: "grant signed by another key", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), GrantSigner: forger})
		}, reason: protocol.ReasonSignatureInvalid, wantID: true},
		{name: "grant document tampered", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), TamperGrant: true})
		}, reason: protocol.ReasonSignatureInvalid, wantID: true},
		{name: "grant for another vin", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), GrantVIN: vehicletest.OtherVIN})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "grant for another command", payload: func() []byte {
			other := gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionHonk)})
			var vc protocol.VehicleCommand
			json.Unmarshal(other, &vc)
			sum, _ := vc.Command.DocSHA256()
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), GrantSHA: sum})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "command for another vin", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.OtherVIN, protocol.ActionUnlock, vehicletest.T0), GrantVIN: vehicletest.VIN})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "unknown action", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid("self_destruct")})
		}, reason: protocol.ReasonBadRequest, wantID: true},
		{name: "expired command", payload: func() []byte {
			c := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0.Add(-time.Minute))
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: c, GrantExpMs: vehicletest.T0.Add(time.Minute).UnixMilli()})
		}, reason: protocol.ReasonExpired, wantID: true},
		{name: "expiry too far ahead", payload: func() []byte {
			c := valid(protocol.ActionUnlock)
			c.ExpiresAtMs = vehicletest.T0.UnixMilli() + protocol.MaxCommandAheadMs + 1
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: c})
		}, reason: protocol.ReasonBadRequest, wantID: true},
		{name: "expired grant", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), GrantExpMs: vehicletest.T0.UnixMilli() - 1})
		}, reason: protocol.ReasonExpired, wantID: true},
		// The phone signature and the whitelist (authorizeCloud).
		{name: "car has no whitelist", noWhitelist: true, payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock)})
		}, reason: protocol.ReasonKeyUnknown, wantID: true},
		{name: "command not signed by a phone", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), Unsigned: true})
		}, reason: protocol.ReasonSignatureInvalid, wantID: true},
		{name: "signed by a key other than the kid it names", payload: func() []byte {
			c := valid(protocol.ActionUnlock)
			c.KeyID, c.User = cast.Owner.Key.ID, cast.Owner.Key.User
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: c, Phone: cast.Stranger, PhoneKID: cast.Owner.Key.ID, GrantUser: "alice"})
		}, reason: protocol.ReasonSignatureInvalid, wantID: true},
		{name: "command document tampered after signing", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), TamperCmd: true})
		}, reason: protocol.ReasonSignatureInvalid, wantID: true},
		{name: "key not on the whitelist", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), Phone: cast.Stranger})
		}, reason: protocol.ReasonKeyUnknown, wantID: true},
		{name: "key revoked", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), Phone: cast.Revoked})
		}, reason: protocol.ReasonKeyRevoked, wantID: true},
		{name: "key not yet valid", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), Phone: cast.NotYet})
		}, reason: protocol.ReasonKeyExpired, wantID: true},
		{name: "key expired", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), Phone: cast.Expired})
		}, reason: protocol.ReasonKeyExpired, wantID: true},
		{name: "local-only key on the cloud path", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), Phone: cast.LocalOnly})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "valet may not open the trunk", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionOpenTrunk), Phone: cast.Valet})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "grant for another user than the key's", payload: func() []byte {
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: valid(protocol.ActionUnlock), GrantUser: "victor"})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "command names another user than the key's", payload: func() []byte {
			c := valid(protocol.ActionUnlock)
			c.User = "victor"
			return gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: c, GrantUser: "victor"})
		}, reason: protocol.ReasonForbidden, wantID: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := vehicletest.OpenStore(t, t.TempDir())
			car := newTestCar(t, st, gw.Creds(t, vehicletest.VIN), vehicletest.NewClock(vehicletest.T0))
			if !tc.noWhitelist {
				vehicletest.Install(t, car, gw.Whitelist(t, vehicletest.WhitelistSpec{}))
			}
			before := car.State()
			payload := tc.payload()
			res := car.HandleCommand(payload)
			if res.Status != protocol.ResultRejected || res.Reason != tc.reason {
				t.Fatalf("got %s/%q, want rejected/%q", res.Status, res.Reason, tc.reason)
			}
			if tc.wantID != (res.ID != "") {
				t.Errorf("result id %q, want an id: %v", res.ID, tc.wantID)
			}
			if res.State != nil {
				t.Errorf("a refusal carries state %v", res.State)
			}
			if got := car.State(); got.Locked != before.Locked {
				t.Errorf("refused command changed the lock: %v → %v", before.Locked, got.Locked)
			}
			if n, _ := st.ReplayLen(vehicletest.VIN); n != 0 {
				t.Errorf("refused command entered the replay cache (%d ids)", n)
			}
		})
	}
}

func TestDuplicateRefusedAlsoAfterRestart(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	dir := t.TempDir()
	clock := vehicletest.NewClock(vehicletest.T0)
	creds := gw.Creds(t, vehicletest.VIN)
	payload := gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0)})

	st, err := carstore.Open(dir + "/" + carstore.File)
	if err != nil {
		t.Fatal(err)
	}
	car := newKeyedCar(t, st, gw, clock)
	if res := car.HandleCommand(payload); res.Status != protocol.ResultExecuted {
		t.Fatalf("first delivery: %s/%s", res.Status, res.Reason)
	}
	clock.Advance(time.Second)
	if res := car.HandleCommand(payload); res.Reason != protocol.ReasonDuplicate {
		t.Fatalf("second delivery: %s/%q, want duplicate", res.Status, res.Reason)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// The car restarts: a new process on the same file.
	st2 := vehicletest.OpenStore(t, dir)
	car2 := newTestCar(t, st2, creds, clock)
	res := car2.HandleCommand(payload)
	if res.Status != protocol.ResultRejected || res.Reason != protocol.ReasonDuplicate {
		t.Fatalf("after restart: %s/%q, want rejected/duplicate", res.Status, res.Reason)
	}
	if res.ID == "" {
		t.Error("duplicate refusal has no id")
	}
}

func TestLockUnlockPersistsAcrossRestart(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	dir := t.TempDir()
	clock := vehicletest.NewClock(vehicletest.T0)
	creds := gw.Creds(t, vehicletest.VIN)

	st, err := carstore.Open(dir + "/" + carstore.File)
	if err != nil {
		t.Fatal(err)
	}
	car := newKeyedCar(t, st, gw, clock)
	if !car.State().Locked {
		t.Fatal("a new car should be parked locked")
	}
	for _, step := range []struct {
		action protocol.Action
		locked bool
	}{{protocol.ActionUnlock, false}, {protocol.ActionLock, true}, {protocol.ActionUnlock, false}} {
		res := car.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, step.action, clock.Now())}))
		if res.Status != protocol.ResultExecuted {
			t.Fatalf("%s: %s/%s", step.action, res.Status, res.Reason)
		}
		if got := res.State[protocol.VSSIsLocked]; got != step.locked {
			t.Fatalf("%s: result says IsLocked=%v", step.action, got)
		}
		if _, ok := res.State[protocol.VSSLatitude]; ok {
			t.Errorf("%s result reveals the position", step.action)
		}
		clock.Advance(time.Second)
	}
	st.Close()

	st2 := vehicletest.OpenStore(t, dir)
	car2 := newTestCar(t, st2, creds, clock)
	if car2.State().Locked {
		t.Fatal("after restart the car forgot it was unlocked")
	}
	if n, _ := st2.ReplayLen(vehicletest.VIN); n != 3 {
		t.Errorf("replay cache holds %d ids, want 3", n)
	}
}

func TestActionsChangeState(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	tests := []struct {
		action protocol.Action
		check  func(before, after State) bool
	}{
		{protocol.ActionOpenTrunk, func(_, s State) bool { return s.TrunkOpen }},
		{protocol.ActionClimateOn, func(_, s State) bool { return s.Climate }},
		{protocol.ActionClimateOff, func(_, s State) bool { return !s.Climate }},
		{protocol.ActionChargeStart, func(_, s State) bool { return s.Charging }},
		{protocol.ActionChargeStop, func(_, s State) bool { return !s.Charging }},
		{protocol.ActionRemoteStart, func(_, s State) bool { return s.Running && s.Climate }},
		{protocol.ActionHonk, func(b, s State) bool { return b == s }},
		{protocol.ActionFlash, func(b, s State) bool { return b == s }},
		{protocol.ActionLocate, func(b, s State) bool { return b == s }},
	}
	for _, tc := range tests {
		t.Run(string(tc.action), func(t *testing.T) {
			st := vehicletest.OpenStore(t, t.TempDir())
			car := newKeyedCar(t, st, gw, vehicletest.NewClock(vehicletest.T0))
			before := car.State()
			res := car.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, tc.action, vehicletest.T0)}))
			if res.Status != protocol.ResultExecuted {
				t.Fatalf("%s/%s", res.Status, res.Reason)
			}
			if !tc.check(before, car.State()) {
				t.Errorf("state after %s: %+v", tc.action, car.State())
			}
			_, hasLat := res.State[protocol.VSSLatitude]
			if hasLat != (tc.action == protocol.ActionLocate) {
				t.Errorf("result has position: %v", hasLat)
			}
		})
	}
}

func TestOpenTrunkRefusedWhileMoving(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	st := vehicletest.OpenStore(t, t.TempDir())
	clock := vehicletest.NewClock(vehicletest.T0)
	car := newKeyedCar(t, st, gw, clock)
	// Drive until the car moves.
	eventuallyState(t, car, clock, func(s State) bool { return s.SpeedKmh > 0 })
	res := car.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionOpenTrunk, clock.Now())}))
	if res.Reason != protocol.ReasonForbidden {
		t.Fatalf("open_trunk at %v km/h: %s/%q", car.State().SpeedKmh, res.Status, res.Reason)
	}
}

// eventuallyState advances the simulated clock, a second at a time for at most a simulated
// day, until cond holds.
func eventuallyState(t *testing.T, car *Car, clock *vehicletest.Clock, cond func(State) bool) {
	t.Helper()
	for i := 0; i < 86400; i++ {
		car.mu.Lock()
		clock.Advance(time.Second)
		car.advanceTo(clock.Now().UnixMilli())
		ok := cond(car.state)
		car.mu.Unlock()
		if ok {
			return
		}
	}
	t.Fatal("condition not reached within a simulated day")
}

func TestReplayCachePruned(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	st := vehicletest.OpenStore(t, t.TempDir())
	clock := vehicletest.NewClock(vehicletest.T0)
	car := newKeyedCar(t, st, gw, clock)
	first := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionHonk, vehicletest.T0)
	if res := car.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: first})); res.Status != protocol.ResultExecuted {
		t.Fatal(res)
	}
	// Well past expiry+slack the next command prunes the first id.
	clock.Advance(protocol.DefaultCommandLifetimeMs*time.Millisecond + carstore.ReplaySlack + time.Second)
	if res := car.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionFlash, clock.Now())})); res.Status != protocol.ResultExecuted {
		t.Fatal(res)
	}
	if ok, _ := st.Executed(vehicletest.VIN, first.ID); ok {
		t.Error("expired id still in the replay cache")
	}
	if n, _ := st.ReplayLen(vehicletest.VIN); n != 1 {
		t.Errorf("replay cache holds %d ids, want 1", n)
	}
}

func TestNewCarNeedsGatewayKey(t *testing.T) {
	st := vehicletest.OpenStore(t, t.TempDir())
	_, err := NewCar(st, protocol.Credentials{VIN: vehicletest.VIN}, CarOptions{})
	if err == nil || !strings.Contains(err.Error(), "gateway_key") {
		t.Fatalf("got %v, want an error naming gateway_key", err)
	}
}

func TestTelemetrySeqMonotonicAcrossRestarts(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	dir := t.TempDir()
	clock := vehicletest.NewClock(vehicletest.T0)
	creds := gw.Creds(t, vehicletest.VIN)
	var last uint64
	for run := 0; run < 3; run++ {
		st, err := carstore.Open(dir + "/" + carstore.File)
		if err != nil {
			t.Fatal(err)
		}
		car := newTestCar(t, st, creds, clock)
		for i := 0; i < 300; i++ {
			clock.Advance(10 * time.Second)
			tm, err := car.NextTelemetry()
			if err != nil {
				t.Fatal(err)
			}
			if tm.Seq <= last {
				t.Fatalf("run %d: seq %d after %d", run, tm.Seq, last)
			}
			// Each run starts a block, as PROTOCOL.md promises receivers counting losses.
			if i == 0 && tm.Seq%protocol.TelemetrySeqBlock != 1 {
				t.Fatalf("run %d starts at seq %d, not at a block", run, tm.Seq)
			}
			last = tm.Seq
			for _, k := range []string{protocol.VSSSpeed, protocol.VSSLatitude, protocol.VSSLongitude, protocol.VSSSoC, protocol.VSSIsLocked} {
				if _, ok := tm.Signals[k]; !ok {
					t.Fatalf("telemetry lacks %s", k)
				}
			}
		}
		// The first two runs crash (no Save), the last one stops cleanly.
		if run == 2 {
			if err := car.Save(); err != nil {
				t.Fatal(err)
			}
		}
		st.Close()
	}
	st := vehicletest.OpenStore(t, dir)
	car := newTestCar(t, st, creds, clock)
	tm, err := car.NextTelemetry()
	if err != nil {
		t.Fatal(err)
	}
	if tm.Seq <= last || tm.Seq%protocol.TelemetrySeqBlock != 1 {
		t.Fatalf("after restarts seq %d, last sent %d: want the start of the next block", tm.Seq, last)
	}
}
