package vehicle_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/link/linktest"
	"telematics/pkg/vehicle/vehicletest"
)

// TestLocalRefusals has one case per reason a car refuses a local command, in the order of
// HandleLocal's checks. Every refusal is answered 200 with the reason and journaled.
func TestLocalRefusals(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	cast := gw.Cast
	tests := []struct {
		name   string
		bare   bool // the car never received a whitelist
		body   func(t *testing.T, r *linktest.Rig) []byte
		reason protocol.Reason
	}{
		{name: "car has no whitelist", bare: true, body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock)})
		}, reason: protocol.ReasonKeyUnknown},
		{name: "command document is not a command", body: func(t *testing.T, r *linktest.Rig) []byte {
			return []byte(`{"v":1,"command":{"doc":"` + protocol.EncodeB64([]byte(`{"v":1}`)) + `","sig":"AA","kid":"x"}}`)
		}, reason: protocol.ReasonBadRequest},
		{name: "unknown action", body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, "self_destruct")})
		}, reason: protocol.ReasonBadRequest},
		{name: "not signed by a phone", body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock), Unsigned: true})
		}, reason: protocol.ReasonSignatureInvalid},
		{name: "signed by a key other than the kid it names", body: func(t *testing.T, r *linktest.Rig) []byte {
			c := r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock)
			c.KeyID, c.User = cast.Owner.Key.ID, cast.Owner.Key.User
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: c, Phone: cast.Stranger, PhoneKID: cast.Owner.Key.ID})
		}, reason: protocol.ReasonSignatureInvalid},
		{name: "command document tampered after signing", body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock), TamperCmd: true})
		}, reason: protocol.ReasonSignatureInvalid},
		{name: "key not on the whitelist", body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock), Phone: cast.Stranger})
		}, reason: protocol.ReasonKeyUnknown},
		{name: "key revoked", body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock), Phone: cast.Revoked})
		}, reason: protocol.ReasonKeyRevoked},
		{name: "key not yet valid", body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock), Phone: cast.NotYet})
		}, reason: protocol.ReasonKeyExpired},
		{name: "key expired", body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock), Phone: cast.Expired})
		}, reason: protocol.ReasonKeyExpired},
		{name: "cloud-only key on the local link", body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock), Phone: cast.CloudOnly})
		}, reason: protocol.ReasonForbidden},
		{name: "valet may not open the trunk", body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionOpenTrunk), Phone: cast.Valet})
		}, reason: protocol.ReasonForbidden},
		{name: "command for another vin", body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.OtherVIN, protocol.ActionUnlock)})
		}, reason: protocol.ReasonForbidden},
		{name: "no nonce", body: func(t *testing.T, r *linktest.Rig) []byte {
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, r.Clock.Now())})
		}, reason: protocol.ReasonBadRequest},
		{name: "nonce never issued", body: func(t *testing.T, r *linktest.Rig) []byte {
			c := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, r.Clock.Now())
			c.Nonce = "AAAAAAAAAAAAAAAAAAAAAA"
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: c})
		}, reason: protocol.ReasonExpired},
		{name: "nonce issued by another car", body: func(t *testing.T, r *linktest.Rig) []byte {
			c := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, r.Clock.Now())
			c.Nonce = r.Challenge(t, vehicletest.OtherVIN).Nonce
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: c})
		}, reason: protocol.ReasonExpired},
		{name: "nonce expired", body: func(t *testing.T, r *linktest.Rig) []byte {
			nonce := r.Challenge(t, vehicletest.VIN).Nonce
			r.Clock.Advance(protocol.ChallengeLifetimeMs*time.Millisecond + time.Millisecond)
			c := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, r.Clock.Now())
			c.Nonce = nonce
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: c})
		}, reason: protocol.ReasonExpired},
		{name: "nonce used before", body: func(t *testing.T, r *linktest.Rig) []byte {
			first := r.LocalCommand(t, vehicletest.VIN, protocol.ActionHonk)
			if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: first})); res.Status != protocol.ResultExecuted {
				t.Fatalf("first command: %+v", res)
			}
			c := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, r.Clock.Now())
			c.Nonce = first.Nonce
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: c})
		}, reason: protocol.ReasonDuplicate},
		{name: "command expired", body: func(t *testing.T, r *linktest.Rig) []byte {
			c := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, r.Clock.Now().Add(-time.Minute))
			c.Nonce = r.Challenge(t, vehicletest.VIN).Nonce
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: c})
		}, reason: protocol.ReasonExpired},
		{name: "expiry more than 30 s ahead", body: func(t *testing.T, r *linktest.Rig) []byte {
			c := r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock)
			c.ExpiresAtMs = r.Clock.Now().UnixMilli() + protocol.MaxCommandAheadMs + 1
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: c})
		}, reason: protocol.ReasonBadRequest},
		{name: "command id executed before", body: func(t *testing.T, r *linktest.Rig) []byte {
			first := r.LocalCommand(t, vehicletest.VIN, protocol.ActionHonk)
			if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: first})); res.Status != protocol.ResultExecuted {
				t.Fatalf("first command: %+v", res)
			}
			again := first
			again.Action = protocol.ActionUnlock
			again.Nonce = r.Challenge(t, vehicletest.VIN).Nonce
			return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: again})
		}, reason: protocol.ReasonDuplicate},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := linktest.NewRig(t, gw, vehicletest.NewClock(vehicletest.T0), t.TempDir(), tc.bare)
			body := tc.body(t, r)
			res := r.Command(t, body)
			if res.Status != protocol.ResultRejected || res.Reason != tc.reason {
				t.Fatalf("got %s/%q, want rejected/%q", res.Status, res.Reason, tc.reason)
			}
			if res.State != nil {
				t.Errorf("a refusal carries state %v", res.State)
			}
			if !r.Car.State().Locked {
				t.Error("a refused command unlocked the car")
			}
			evs := vehicletest.Journal(t, r.Store, vehicletest.VIN)
			if len(evs) == 0 {
				t.Fatal("refusal not journaled")
			}
			last := evs[len(evs)-1]
			if last.Status != protocol.ResultRejected || last.Reason != tc.reason || last.Kind != protocol.EventLocalCommand ||
				last.VIN != vehicletest.VIN || last.TsMs != r.Clock.Now().UnixMilli() || last.Seq != uint64(len(evs)) {
				t.Errorf("journal entry %+v", last)
			}
			var req protocol.LocalRequest
			json.Unmarshal(body, &req)
			raw, _ := json.Marshal(last)
			if req.Command.Sig != "" && strings.Contains(string(raw), req.Command.Sig) {
				t.Errorf("journal entry carries the signature: %s", raw)
			}
			if doc, err := req.Command.DocBytes(); err == nil {
				var c protocol.Command
				if json.Unmarshal(doc, &c) == nil && c.Nonce != "" && strings.Contains(string(raw), c.Nonce) {
					t.Errorf("journal entry carries the nonce: %s", raw)
				}
			}
		})
	}
}

func TestLocalUnlockExecutesAndJournals(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	r := linktest.NewRig(t, gw, vehicletest.NewClock(vehicletest.T0), t.TempDir(), false)

	ch := r.Challenge(t, vehicletest.VIN)
	if nonce, err := protocol.DecodeB64(ch.Nonce); err != nil || len(nonce) != 16 || ch.VIN != vehicletest.VIN || ch.V != protocol.Version ||
		ch.ExpiresAtMs != vehicletest.T0.UnixMilli()+protocol.ChallengeLifetimeMs {
		t.Fatalf("challenge %+v", ch)
	}
	cmd := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0)
	cmd.Nonce = ch.Nonce
	res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: cmd}))
	if res.Status != protocol.ResultExecuted || res.ID != cmd.ID || res.State[protocol.VSSIsLocked] != false {
		t.Fatalf("result %+v", res)
	}
	if _, ok := res.State[protocol.VSSLatitude]; ok {
		t.Error("an unlock result reveals the position")
	}
	if r.Car.State().Locked {
		t.Fatal("the car is still locked")
	}
	evs := vehicletest.Journal(t, r.Store, vehicletest.VIN)
	want := protocol.VehicleEvent{V: protocol.Version, VIN: vehicletest.VIN, Seq: 1, Kind: protocol.EventLocalCommand, CmdID: cmd.ID,
		KeyID: gw.Cast.Owner.Key.ID, User: "alice", Action: protocol.ActionUnlock, Status: protocol.ResultExecuted, TsMs: vehicletest.T0.UnixMilli()}
	if len(evs) != 1 || evs[0] != want {
		t.Fatalf("journal %+v\nwant %+v", evs, want)
	}

	// The replay cache is the cloud path's too: the same id through the gateway is a replay.
	same := gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: cmd})
	if res := r.Car.HandleCommand(same); res.Reason != protocol.ReasonDuplicate {
		t.Fatalf("the local command's id on the cloud path: %+v", res)
	}
	// And a cloud command is not journaled.
	if res := r.Car.HandleCommand(gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionLock, vehicletest.T0)})); res.Status != protocol.ResultExecuted {
		t.Fatal(res)
	}
	if n := len(vehicletest.Journal(t, r.Store, vehicletest.VIN)); n != 1 {
		t.Errorf("journal holds %d entries after a cloud command", n)
	}
}

// TestLocalReplayAfterRestart: a car that restarts (store reopened, new process) knows none of
// its old nonces, but still every id it executed.
func TestLocalReplayAfterRestart(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	dir := t.TempDir()
	clock := vehicletest.NewClock(vehicletest.T0)
	r := linktest.NewRig(t, gw, clock, dir, false)
	cmd := r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock)
	body := gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: cmd})
	if res := r.Command(t, body); res.Status != protocol.ResultExecuted {
		t.Fatal(res)
	}
	if res := r.Command(t, body); res.Reason != protocol.ReasonDuplicate {
		t.Fatalf("the same request again: %+v", res)
	}
	r.Stop()

	clock.Advance(time.Second)
	r = linktest.NewRig(t, gw, clock, dir, true) // whatever the car knows now comes from its store
	if res := r.Command(t, body); res.Status != protocol.ResultRejected || res.Reason != protocol.ReasonExpired {
		t.Fatalf("the same request after restart: %+v (its nonce is from before)", res)
	}
	again := cmd
	again.Nonce = r.Challenge(t, vehicletest.VIN).Nonce
	if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: again})); res.Status != protocol.ResultRejected || res.Reason != protocol.ReasonDuplicate {
		t.Fatalf("the same id with a fresh nonce after restart: %+v", res)
	}
	if res := r.Command(t, gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionLock)})); res.Status != protocol.ResultExecuted {
		t.Fatalf("a new command after restart: %+v", res)
	}
	// The journal survived: every decision, in order.
	evs := vehicletest.Journal(t, r.Store, vehicletest.VIN)
	var got []string
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Errorf("entry %d has seq %d", i, ev.Seq)
		}
		got = append(got, fmt.Sprintf("%s/%s/%s", ev.Action, ev.Status, ev.Reason))
	}
	want := []string{"unlock/executed/", "unlock/rejected/duplicate", "unlock/rejected/expired", "unlock/rejected/duplicate", "lock/executed/"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("journal %v, want %v", got, want)
	}
}

// TestLocalConcurrent: phones racing for one car are served one at a time, each exactly once.
func TestLocalConcurrent(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	r := linktest.NewRig(t, gw, vehicletest.NewClock(vehicletest.T0), t.TempDir(), false)
	const n = 8
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionFlash)})
	}
	var wg sync.WaitGroup
	results := make([]protocol.Result, 2*n)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = r.Command(t, bodies[i%n])
		}()
	}
	wg.Wait()
	executed := 0
	for _, res := range results {
		if res.Status == protocol.ResultExecuted {
			executed++
		} else if res.Reason != protocol.ReasonDuplicate {
			t.Errorf("result %+v", res)
		}
	}
	if executed != n {
		t.Errorf("%d executed, want %d", executed, n)
	}
	evs := vehicletest.Journal(t, r.Store, vehicletest.VIN)
	if len(evs) != 2*n {
		t.Fatalf("journal holds %d entries, want %d", len(evs), 2*n)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("entry %d has seq %d", i, ev.Seq)
		}
	}
}
