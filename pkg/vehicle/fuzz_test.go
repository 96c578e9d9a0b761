package vehicle

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/vehicletest"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpora in testdata/fuzz and, if missing, the test keys")

// Keys made for the fuzz corpora only: the seeds carry grants and whitelists the gateway key
// signed and commands the phone key signed, valid at vehicletest.T0, so that the fuzzer starts from
// messages that pass every check.
const (
	fuzzGatewayKeyFile = "testdata/gateway-test-key.pem"
	fuzzPhoneKeyFile   = "testdata/phone-test-key.pem"
)

// fuzzNonce is the local-link nonce the seeds carry; the harness issues it before each input.
const fuzzNonce = "AAAAAAAAAAAAAAAAAAAAAA"

func loadFuzzKey(t testing.TB, path string) *sign.Signer {
	t.Helper()
	if _, err := os.Stat(path); err != nil && !*updateCorpus {
		t.Fatalf("%v: run go test -run TestUpdateFuzzCorpus -update-corpus", err)
	}
	s, _, err := sign.LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fuzzGateway is the gateway of the corpora; its cast's owner (alice, both channels) is the
// phone of the corpora. The whitelist holds only her key.
func fuzzGateway(t testing.TB) *vehicletest.Gateway {
	t.Helper()
	gw := &vehicletest.Gateway{Signer: loadFuzzKey(t, fuzzGatewayKeyFile), Cast: vehicletest.NewCast(t, vehicletest.T0)}
	gw.Cast.Owner = vehicletest.PhoneFromSigner(t, loadFuzzKey(t, fuzzPhoneKeyFile), "alice", protocol.RoleOwner,
		protocol.ChannelCloud, protocol.ChannelLocal)
	return gw
}

// fuzzWhitelist is the corpora's whitelist: alice's key alone.
func fuzzWhitelist(t testing.TB, g *vehicletest.Gateway) []byte {
	return g.Whitelist(t, vehicletest.WhitelistSpec{Keys: []protocol.WhitelistKey{g.Cast.Owner.Key}})
}

// openFuzzStore is a store for the fuzzers, which look for logic errors, not for durability:
// without fsync an input costs microseconds instead of milliseconds, which
// matters most when the fuzzer minimizes an input by running it thousands of times. Never
// outside a fuzz harness: the cars' store is always synced.
func openFuzzStore(t testing.TB) *carstore.Store {
	t.Helper()
	st := vehicletest.OpenStore(t, t.TempDir())
	st.Unsynced()
	return st
}

// fuzzCar is vehicletest.VIN's car at vehicletest.T0 with the corpora's whitelist.
func fuzzCar(t testing.TB, gw *vehicletest.Gateway) *Car {
	t.Helper()
	st := openFuzzStore(t)
	car, err := NewCar(st, gw.Creds(t, vehicletest.VIN), CarOptions{Clock: vehicletest.NewClock(vehicletest.T0)})
	if err != nil {
		t.Fatal(err)
	}
	vehicletest.Install(t, car, fuzzWhitelist(t, gw))
	return car
}

// commandSeeds are real messages for v/{vin}/cmd at vehicletest.T0, valid and refused.
func commandSeeds(t testing.TB, gw *vehicletest.Gateway) map[string][]byte {
	forger, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	expired := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionLock, vehicletest.T0.Add(-time.Minute))
	ahead := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionLock, vehicletest.T0)
	ahead.ExpiresAtMs += protocol.MaxCommandAheadMs
	withParams := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionClimateOn, vehicletest.T0)
	withParams.Params = []byte(`{"temp_c":21.5}`)
	return map[string][]byte{
		"unlock":       gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0)}),
		"locate":       gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionLocate, vehicletest.T0)}),
		"climate":      gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: withParams}),
		"forged":       gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0), GrantSigner: forger}),
		"unsigned":     gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0), Unsigned: true}),
		"stranger":     gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0), Phone: gw.Cast.Stranger}),
		"other_user":   gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0), GrantUser: "victor"}),
		"other_vin":    gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.OtherVIN, protocol.ActionUnlock, vehicletest.T0)}),
		"expired":      gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: expired, GrantExpMs: vehicletest.T0.Add(time.Minute).UnixMilli()}),
		"too_far":      gw.CloudCommand(t, vehicletest.CommandSpec{Cmd: ahead}),
		"malformed":    []byte(`{"v":1,"command":{"doc":"!!"},"grant":{"doc":"e30","sig":"AA"}}`),
		"empty_object": []byte(`{}`),
	}
}

// whitelistSeeds are real messages for v/{vin}/keys.
func whitelistSeeds(t testing.TB, gw *vehicletest.Gateway) map[string][]byte {
	forger, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	// A trust list that keeps the corpora's gateway key, so that fuzzing goes on after it.
	trust := []string{vehicletest.EncodePub(t, gw.Signer), vehicletest.EncodePub(t, forger)}
	return map[string][]byte{
		"v1":        fuzzWhitelist(t, gw),
		"v2":        gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 2}),
		"v3_trust":  gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 3, Trust: trust}),
		"empty":     gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 4, NoKeys: true}),
		"other_vin": gw.Whitelist(t, vehicletest.WhitelistSpec{VIN: vehicletest.OtherVIN, Version: 9}),
		"forged":    gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 9, Signer: forger}),
		"tampered":  gw.Whitelist(t, vehicletest.WhitelistSpec{Version: 9, Tamper: true}),
		"malformed": []byte(`{"doc":"e30","sig":"AA","kid":"x"}`),
		"not_json":  []byte(`keys`),
	}
}

// localSeeds are real local-link request bodies at vehicletest.T0, carrying fuzzNonce.
func localSeeds(t testing.TB, gw *vehicletest.Gateway) map[string][]byte {
	cmd := func(vin string, a protocol.Action) protocol.Command {
		c := vehicletest.NewCommand(vin, a, vehicletest.T0)
		c.Nonce = fuzzNonce
		return c
	}
	noNonce := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0)
	otherNonce := cmd(vehicletest.VIN, protocol.ActionUnlock)
	otherNonce.Nonce = "BBBBBBBBBBBBBBBBBBBBBB"
	ahead := cmd(vehicletest.VIN, protocol.ActionLock)
	ahead.ExpiresAtMs += protocol.MaxCommandAheadMs
	return map[string][]byte{
		"unlock":      gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: cmd(vehicletest.VIN, protocol.ActionUnlock)}),
		"locate":      gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: cmd(vehicletest.VIN, protocol.ActionLocate)}),
		"unsigned":    gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: cmd(vehicletest.VIN, protocol.ActionUnlock), Unsigned: true}),
		"stranger":    gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: cmd(vehicletest.VIN, protocol.ActionUnlock), Phone: gw.Cast.Stranger}),
		"tampered":    gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: cmd(vehicletest.VIN, protocol.ActionUnlock), TamperCmd: true}),
		"other_vin":   gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: cmd(vehicletest.OtherVIN, protocol.ActionUnlock)}),
		"no_nonce":    gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: noNonce}),
		"other_nonce": gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: otherNonce}),
		"too_far":     gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: ahead}),
		"malformed":   []byte(`{"v":1,"command":{"doc":"!!","sig":"AA","kid":"x"}}`),
		"wrong_v":     []byte(`{"v":2,"command":{"doc":"e30"}}`),
		"empty":       []byte(`{}`),
	}
}

// TestUpdateFuzzCorpus rewrites the seed corpora (and the keys, if missing) when run with
// -update-corpus.
func TestUpdateFuzzCorpus(t *testing.T) {
	if !*updateCorpus {
		t.Skip("run with -update-corpus to rewrite testdata/fuzz")
	}
	gw := fuzzGateway(t)
	for target, seeds := range map[string]map[string][]byte{
		"FuzzHandleCommand":   commandSeeds(t, gw),
		"FuzzVerifyWhitelist": whitelistSeeds(t, gw),
		"FuzzLocalRequest":    localSeeds(t, gw),
	} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, "seed_"+name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// FuzzHandleCommand feeds arbitrary bytes to a car: it never panics, answers every message
// with executed or a reason from the closed list, and never executes the same message twice.
func FuzzHandleCommand(f *testing.F) {
	gw := fuzzGateway(f)
	for _, b := range commandSeeds(f, gw) {
		f.Add(b)
	}
	car := fuzzCar(f, gw)
	f.Fuzz(func(t *testing.T, payload []byte) {
		res := car.HandleCommand(payload)
		checkResult(t, res)
		if res.Status == protocol.ResultExecuted {
			again := car.HandleCommand(payload)
			if again.Status != protocol.ResultRejected || again.Reason != protocol.ReasonDuplicate {
				t.Fatalf("the same command again: %+v", again)
			}
		}
	})
}

// checkResult asserts what every answer of a car satisfies.
func checkResult(t *testing.T, res protocol.Result) {
	t.Helper()
	switch res.Status {
	case protocol.ResultExecuted:
		if res.Reason != "" || res.State == nil || !protocol.ValidID(res.ID) {
			t.Fatalf("executed result %+v", res)
		}
	case protocol.ResultRejected:
		if !res.Reason.Valid() {
			t.Fatalf("reason %q not on the closed list", res.Reason)
		}
		if res.ID != "" && !protocol.ValidID(res.ID) {
			t.Fatalf("result id %q", res.ID)
		}
		if res.State != nil {
			t.Fatalf("a refusal carries state: %+v", res)
		}
	default:
		t.Fatalf("status %q", res.Status)
	}
}

// FuzzVerifyWhitelist feeds arbitrary bytes to a car's whitelist handler (whitelist.Verify
// behind it): it never panics, refuses with a reason from the closed list and then keeps its
// whitelist, acknowledges only a version at least as new as the one it had, and acknowledges an
// accepted message again when it comes back.
func FuzzVerifyWhitelist(f *testing.F) {
	gw := fuzzGateway(f)
	for _, b := range whitelistSeeds(f, gw) {
		f.Add(b)
	}
	st := openFuzzStore(f)
	car, err := NewCar(st, gw.Creds(f, vehicletest.VIN), CarOptions{Clock: vehicletest.NewClock(vehicletest.T0)})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		before := car.WhitelistVersion()
		ack, err := car.HandleWhitelist(payload)
		after := car.WhitelistVersion()
		if err != nil {
			if ack != nil || after != before {
				t.Fatalf("refused (%v) but acked %+v, version %d → %d", err, ack, before, after)
			}
			switch r := protocol.ReasonOf(err); r {
			case protocol.ReasonBadRequest, protocol.ReasonSignatureInvalid, protocol.ReasonForbidden, protocol.ReasonDuplicate:
			default:
				t.Fatalf("reason %q for a whitelist: %v", r, err)
			}
			return
		}
		if ack == nil || ack.VIN != vehicletest.VIN || ack.Version == 0 || ack.Version < before || ack.Version != after {
			t.Fatalf("ack %+v, version %d → %d", ack, before, after)
		}
		again, err := car.HandleWhitelist(payload)
		if err != nil || again.Version != after || car.WhitelistVersion() != after {
			t.Fatalf("the same whitelist again: %+v %v", again, err)
		}
	})
}

// readSeed reads one corpus file (go test fuzz v1, a single []byte).
func readSeed(t *testing.T, target, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "fuzz", target, name))
	if err != nil {
		t.Fatal(err)
	}
	_, line, _ := strings.Cut(strings.TrimSpace(string(raw)), "\n")
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(line, "[]byte("), ")"))
	if err != nil {
		t.Fatalf("%s/%s: %v", target, name, err)
	}
	return []byte(s)
}

// TestFuzzCorpusIsLive checks that the valid seeds on disk still pass every check, so that the
// fuzzers start beyond the signature checks (regenerate with -update-corpus if this fails).
func TestFuzzCorpusIsLive(t *testing.T) {
	gw := fuzzGateway(t)
	car := fuzzCar(t, gw)
	if res := car.HandleCommand(readSeed(t, "FuzzHandleCommand", "seed_unlock")); res.Status != protocol.ResultExecuted {
		t.Errorf("FuzzHandleCommand/seed_unlock: %+v", res)
	}
	car.nonces.add(fuzzNonce, "", 0, vehicletest.T0.UnixMilli()+protocol.ChallengeLifetimeMs, vehicletest.T0.UnixMilli())
	req, err := DecodeLocalRequest(readSeed(t, "FuzzLocalRequest", "seed_unlock"))
	if err != nil {
		t.Fatal(err)
	}
	if res := car.HandleLocal(req); res.Status != protocol.ResultExecuted {
		t.Errorf("FuzzLocalRequest/seed_unlock: %+v", res)
	}
	fresh := newTestCar(t, vehicletest.OpenStore(t, t.TempDir()), gw.Creds(t, vehicletest.VIN), vehicletest.NewClock(vehicletest.T0))
	if _, err := fresh.HandleWhitelist(readSeed(t, "FuzzVerifyWhitelist", "seed_v1")); err != nil {
		t.Errorf("FuzzVerifyWhitelist/seed_v1: %v", err)
	}
}
