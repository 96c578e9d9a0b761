package vehicle

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/carstore"
)

var t0 = time.UnixMilli(1_760_000_000_000)

// TestHandleCommandRefusals has one case per reason a car refuses a cloud command, in the
// order of HandleCommand's checks.
func TestHandleCommandRefusals(t *testing.T) {
	gw := newTestGateway(t)
	cast := gw.cast
	forger, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	valid := func(a protocol.Action) protocol.Command { return newCmd(testVIN, a, t0) }

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
			json.Unmarshal(gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock)}), &m)
			m["v"] = 2
			b, _ := json.Marshal(m)
			return b
		}, reason: protocol.ReasonBadRequest, wantID: true},
		{name: "no grant", payload: func() []byte {
			var m map[string]any
			json.Unmarshal(gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock)}), &m)
			delete(m, "grant")
			b, _ := json.Marshal(m)
			return b
		}, reason: protocol.ReasonBadRequest, wantID: true},
		{name: "empty grant", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), noGrant: true})
		}, reason: protocol.ReasonBadRequest, wantID: true},
		{name: "grant signed by another key", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), grantSigner: forger})
		}, reason: protocol.ReasonSignatureInvalid, wantID: true},
		{name: "grant document tampered", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), tamperGrant: true})
		}, reason: protocol.ReasonSignatureInvalid, wantID: true},
		{name: "grant for another vin", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), grantVIN: otherVIN})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "grant for another command", payload: func() []byte {
			other := gw.build(t, cmdSpec{cmd: valid(protocol.ActionHonk)})
			var vc protocol.VehicleCommand
			json.Unmarshal(other, &vc)
			sum, _ := vc.Command.DocSHA256()
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), grantSHA: sum})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "command for another vin", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: newCmd(otherVIN, protocol.ActionUnlock, t0), grantVIN: testVIN})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "unknown action", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid("self_destruct")})
		}, reason: protocol.ReasonBadRequest, wantID: true},
		{name: "expired command", payload: func() []byte {
			c := newCmd(testVIN, protocol.ActionUnlock, t0.Add(-time.Minute))
			return gw.build(t, cmdSpec{cmd: c, grantExpMs: t0.Add(time.Minute).UnixMilli()})
		}, reason: protocol.ReasonExpired, wantID: true},
		{name: "expiry too far ahead", payload: func() []byte {
			c := valid(protocol.ActionUnlock)
			c.ExpiresAtMs = t0.UnixMilli() + protocol.MaxCommandAheadMs + 1
			return gw.build(t, cmdSpec{cmd: c})
		}, reason: protocol.ReasonBadRequest, wantID: true},
		{name: "expired grant", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), grantExpMs: t0.UnixMilli() - 1})
		}, reason: protocol.ReasonExpired, wantID: true},
		// The phone signature and the whitelist (authorizeCloud).
		{name: "car has no whitelist", noWhitelist: true, payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock)})
		}, reason: protocol.ReasonKeyUnknown, wantID: true},
		{name: "command not signed by a phone", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), unsigned: true})
		}, reason: protocol.ReasonSignatureInvalid, wantID: true},
		{name: "signed by a key other than the kid it names", payload: func() []byte {
			c := valid(protocol.ActionUnlock)
			c.KeyID, c.User = cast.owner.key.ID, cast.owner.key.User
			return gw.build(t, cmdSpec{cmd: c, phone: cast.stranger, phoneKID: cast.owner.key.ID, grantUser: "alice"})
		}, reason: protocol.ReasonSignatureInvalid, wantID: true},
		{name: "command document tampered after signing", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), tamperCmd: true})
		}, reason: protocol.ReasonSignatureInvalid, wantID: true},
		{name: "key not on the whitelist", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), phone: cast.stranger})
		}, reason: protocol.ReasonKeyUnknown, wantID: true},
		{name: "key revoked", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), phone: cast.revoked})
		}, reason: protocol.ReasonKeyRevoked, wantID: true},
		{name: "key not yet valid", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), phone: cast.notYet})
		}, reason: protocol.ReasonKeyExpired, wantID: true},
		{name: "key expired", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), phone: cast.expired})
		}, reason: protocol.ReasonKeyExpired, wantID: true},
		{name: "local-only key on the cloud path", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), phone: cast.localOnly})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "valet may not open the trunk", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionOpenTrunk), phone: cast.valet})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "grant for another user than the key's", payload: func() []byte {
			return gw.build(t, cmdSpec{cmd: valid(protocol.ActionUnlock), grantUser: "victor"})
		}, reason: protocol.ReasonForbidden, wantID: true},
		{name: "command names another user than the key's", payload: func() []byte {
			c := valid(protocol.ActionUnlock)
			c.User = "victor"
			return gw.build(t, cmdSpec{cmd: c, grantUser: "victor"})
		}, reason: protocol.ReasonForbidden, wantID: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := openTestStore(t, t.TempDir())
			car := newTestCar(t, st, gw.creds(t, testVIN), newClock(t0))
			if !tc.noWhitelist {
				install(t, car, gw.whitelist(t, wlSpec{}))
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
			if n, _ := st.ReplayLen(testVIN); n != 0 {
				t.Errorf("refused command entered the replay cache (%d ids)", n)
			}
		})
	}
}

func TestDuplicateRefusedAlsoAfterRestart(t *testing.T) {
	gw := newTestGateway(t)
	dir := t.TempDir()
	clock := newClock(t0)
	creds := gw.creds(t, testVIN)
	payload := gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, t0)})

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
	st2 := openTestStore(t, dir)
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
	gw := newTestGateway(t)
	dir := t.TempDir()
	clock := newClock(t0)
	creds := gw.creds(t, testVIN)

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
		res := car.HandleCommand(gw.build(t, cmdSpec{cmd: newCmd(testVIN, step.action, clock.Now())}))
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

	st2 := openTestStore(t, dir)
	car2 := newTestCar(t, st2, creds, clock)
	if car2.State().Locked {
		t.Fatal("after restart the car forgot it was unlocked")
	}
	if n, _ := st2.ReplayLen(testVIN); n != 3 {
		t.Errorf("replay cache holds %d ids, want 3", n)
	}
}

func TestActionsChangeState(t *testing.T) {
	gw := newTestGateway(t)
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
			st := openTestStore(t, t.TempDir())
			car := newKeyedCar(t, st, gw, newClock(t0))
			before := car.State()
			res := car.HandleCommand(gw.build(t, cmdSpec{cmd: newCmd(testVIN, tc.action, t0)}))
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
	gw := newTestGateway(t)
	st := openTestStore(t, t.TempDir())
	clock := newClock(t0)
	car := newKeyedCar(t, st, gw, clock)
	// Drive until the car moves.
	eventuallyState(t, car, clock, func(s State) bool { return s.SpeedKmh > 0 })
	res := car.HandleCommand(gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionOpenTrunk, clock.Now())}))
	if res.Reason != protocol.ReasonForbidden {
		t.Fatalf("open_trunk at %v km/h: %s/%q", car.State().SpeedKmh, res.Status, res.Reason)
	}
}

// eventuallyState advances the simulated clock, a second at a time for at most a simulated
// day, until cond holds.
func eventuallyState(t *testing.T, car *Car, clock *clocktest.Fake, cond func(State) bool) {
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
	gw := newTestGateway(t)
	st := openTestStore(t, t.TempDir())
	clock := newClock(t0)
	car := newKeyedCar(t, st, gw, clock)
	first := newCmd(testVIN, protocol.ActionHonk, t0)
	if res := car.HandleCommand(gw.build(t, cmdSpec{cmd: first})); res.Status != protocol.ResultExecuted {
		t.Fatal(res)
	}
	// Well past expiry+slack the next command prunes the first id.
	clock.Advance(protocol.DefaultCommandLifetimeMs*time.Millisecond + carstore.ReplaySlack + time.Second)
	if res := car.HandleCommand(gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionFlash, clock.Now())})); res.Status != protocol.ResultExecuted {
		t.Fatal(res)
	}
	if ok, _ := st.Executed(testVIN, first.ID); ok {
		t.Error("expired id still in the replay cache")
	}
	if n, _ := st.ReplayLen(testVIN); n != 1 {
		t.Errorf("replay cache holds %d ids, want 1", n)
	}
}

func TestNewCarNeedsGatewayKey(t *testing.T) {
	st := openTestStore(t, t.TempDir())
	_, err := NewCar(st, protocol.Credentials{VIN: testVIN}, CarOptions{})
	if err == nil || !strings.Contains(err.Error(), "gateway_key") {
		t.Fatalf("got %v, want an error naming gateway_key", err)
	}
}

func TestTelemetrySeqMonotonicAcrossRestarts(t *testing.T) {
	gw := newTestGateway(t)
	dir := t.TempDir()
	clock := newClock(t0)
	creds := gw.creds(t, testVIN)
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
	st := openTestStore(t, dir)
	car := newTestCar(t, st, creds, clock)
	tm, err := car.NextTelemetry()
	if err != nil {
		t.Fatal(err)
	}
	if tm.Seq <= last || tm.Seq%protocol.TelemetrySeqBlock != 1 {
		t.Fatalf("after restarts seq %d, last sent %d: want the start of the next block", tm.Seq, last)
	}
}
