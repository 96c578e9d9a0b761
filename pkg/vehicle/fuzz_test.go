package vehicle

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/carstore"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpora in testdata/fuzz and, if missing, the test keys")

// Keys made for the fuzz corpora only: the seeds carry grants and whitelists the gateway key
// signed and commands the phone key signed, valid at t0, so that the fuzzer starts from
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
func fuzzGateway(t testing.TB) *testGateway {
	t.Helper()
	gw := &testGateway{signer: loadFuzzKey(t, fuzzGatewayKeyFile), cast: newCast(t, t0)}
	gw.cast.owner = phoneFromSigner(t, loadFuzzKey(t, fuzzPhoneKeyFile), "alice", protocol.RoleOwner,
		protocol.ChannelCloud, protocol.ChannelLocal)
	return gw
}

func (g *testGateway) fuzzWhitelist(t testing.TB) []byte {
	return g.whitelist(t, wlSpec{keys: []protocol.WhitelistKey{g.cast.owner.key}})
}

// openFuzzStore is a store for the fuzzers, which look for logic errors, not for durability:
// without fsync an input costs microseconds instead of milliseconds, which
// matters most when the fuzzer minimizes an input by running it thousands of times. Never
// outside a fuzz harness: the cars' store is always synced.
func openFuzzStore(t testing.TB) *carstore.Store {
	t.Helper()
	st := openTestStore(t, t.TempDir())
	st.Unsynced()
	return st
}

// fuzzCar is testVIN's car at t0 with the corpora's whitelist.
func fuzzCar(t testing.TB, gw *testGateway) *Car {
	t.Helper()
	st := openFuzzStore(t)
	car, err := NewCar(st, gw.creds(t, testVIN), CarOptions{Clock: newClock(t0)})
	if err != nil {
		t.Fatal(err)
	}
	install(t, car, gw.fuzzWhitelist(t))
	return car
}

// commandSeeds are real messages for v/{vin}/cmd at t0, valid and refused.
func commandSeeds(t testing.TB, gw *testGateway) map[string][]byte {
	forger, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	expired := newCmd(testVIN, protocol.ActionLock, t0.Add(-time.Minute))
	ahead := newCmd(testVIN, protocol.ActionLock, t0)
	ahead.ExpiresAtMs += protocol.MaxCommandAheadMs
	withParams := newCmd(testVIN, protocol.ActionClimateOn, t0)
	withParams.Params = []byte(`{"temp_c":21.5}`)
	return map[string][]byte{
		"unlock":       gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, t0)}),
		"locate":       gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionLocate, t0)}),
		"climate":      gw.build(t, cmdSpec{cmd: withParams}),
		"forged":       gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, t0), grantSigner: forger}),
		"unsigned":     gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, t0), unsigned: true}),
		"stranger":     gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, t0), phone: gw.cast.stranger}),
		"other_user":   gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, t0), grantUser: "victor"}),
		"other_vin":    gw.build(t, cmdSpec{cmd: newCmd(otherVIN, protocol.ActionUnlock, t0)}),
		"expired":      gw.build(t, cmdSpec{cmd: expired, grantExpMs: t0.Add(time.Minute).UnixMilli()}),
		"too_far":      gw.build(t, cmdSpec{cmd: ahead}),
		"malformed":    []byte(`{"v":1,"command":{"doc":"!!"},"grant":{"doc":"e30","sig":"AA"}}`),
		"empty_object": []byte(`{}`),
	}
}

// whitelistSeeds are real messages for v/{vin}/keys.
func whitelistSeeds(t testing.TB, gw *testGateway) map[string][]byte {
	forger, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	// A trust list that keeps the corpora's gateway key, so that fuzzing goes on after it.
	trust := []string{encodePub(t, gw.signer), encodePub(t, forger)}
	return map[string][]byte{
		"v1":        gw.fuzzWhitelist(t),
		"v2":        gw.whitelist(t, wlSpec{version: 2}),
		"v3_trust":  gw.whitelist(t, wlSpec{version: 3, trust: trust}),
		"empty":     gw.whitelist(t, wlSpec{version: 4, noKeys: true}),
		"other_vin": gw.whitelist(t, wlSpec{vin: otherVIN, version: 9}),
		"forged":    gw.whitelist(t, wlSpec{version: 9, signer: forger}),
		"tampered":  gw.whitelist(t, wlSpec{version: 9, tamper: true}),
		"malformed": []byte(`{"doc":"e30","sig":"AA","kid":"x"}`),
		"not_json":  []byte(`keys`),
	}
}

// localSeeds are real local-link request bodies at t0, carrying fuzzNonce.
func localSeeds(t testing.TB, gw *testGateway) map[string][]byte {
	cmd := func(vin string, a protocol.Action) protocol.Command {
		c := newCmd(vin, a, t0)
		c.Nonce = fuzzNonce
		return c
	}
	noNonce := newCmd(testVIN, protocol.ActionUnlock, t0)
	otherNonce := cmd(testVIN, protocol.ActionUnlock)
	otherNonce.Nonce = "BBBBBBBBBBBBBBBBBBBBBB"
	ahead := cmd(testVIN, protocol.ActionLock)
	ahead.ExpiresAtMs += protocol.MaxCommandAheadMs
	return map[string][]byte{
		"unlock":      gw.local(t, cmdSpec{cmd: cmd(testVIN, protocol.ActionUnlock)}),
		"locate":      gw.local(t, cmdSpec{cmd: cmd(testVIN, protocol.ActionLocate)}),
		"unsigned":    gw.local(t, cmdSpec{cmd: cmd(testVIN, protocol.ActionUnlock), unsigned: true}),
		"stranger":    gw.local(t, cmdSpec{cmd: cmd(testVIN, protocol.ActionUnlock), phone: gw.cast.stranger}),
		"tampered":    gw.local(t, cmdSpec{cmd: cmd(testVIN, protocol.ActionUnlock), tamperCmd: true}),
		"other_vin":   gw.local(t, cmdSpec{cmd: cmd(otherVIN, protocol.ActionUnlock)}),
		"no_nonce":    gw.local(t, cmdSpec{cmd: noNonce}),
		"other_nonce": gw.local(t, cmdSpec{cmd: otherNonce}),
		"too_far":     gw.local(t, cmdSpec{cmd: ahead}),
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
	car, err := NewCar(st, gw.creds(f, testVIN), CarOptions{Clock: newClock(t0)})
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
		if ack == nil || ack.VIN != testVIN || ack.Version == 0 || ack.Version < before || ack.Version != after {
			t.Fatalf("ack %+v, version %d → %d", ack, before, after)
		}
		again, err := car.HandleWhitelist(payload)
		if err != nil || again.Version != after || car.WhitelistVersion() != after {
			t.Fatalf("the same whitelist again: %+v %v", again, err)
		}
	})
}

// FuzzLocalRequest feeds arbitrary bodies to the local link's command endpoint (decoder and
// car): it never panics, answers 200 with a result or 400 bad_request, and never executes a
// request twice. The seeds' nonce is issued afresh before every input.
func FuzzLocalRequest(f *testing.F) {
	gw := fuzzGateway(f)
	for _, b := range localSeeds(f, gw) {
		f.Add(b)
	}
	car := fuzzCar(f, gw)
	garage := NewGarage()
	garage.Put(car)
	h := NewLinkServer(garage, nil).Handler()
	post := func(t *testing.T, body []byte) (int, []byte) {
		req := httptest.NewRequest(http.MethodPost, "/v1/link/"+testVIN+"/command", strings.NewReader(string(body)))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Body.Bytes()
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		car.nonces.mu.Lock()
		car.nonces.entries = nil
		car.nonces.mu.Unlock()
		car.nonces.add(fuzzNonce, "", 0, t0.UnixMilli()+protocol.ChallengeLifetimeMs, t0.UnixMilli())

		code, out := post(t, body)
		switch code {
		case http.StatusOK:
			var res protocol.Result
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("200 with %q: %v", out, err)
			}
			checkResult(t, res)
			if res.Status == protocol.ResultExecuted {
				code, out = post(t, body)
				var again protocol.Result
				json.Unmarshal(out, &again)
				if code != http.StatusOK || again.Status != protocol.ResultRejected || again.Reason != protocol.ReasonDuplicate {
					t.Fatalf("the same request again: %d %s", code, out)
				}
			}
		case http.StatusBadRequest:
			var e struct {
				Error protocol.Reason `json:"error"`
			}
			if err := json.Unmarshal(out, &e); err != nil || e.Error != protocol.ReasonBadRequest {
				t.Fatalf("400 with %q", out)
			}
		default:
			t.Fatalf("status %d: %s", code, out)
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
	car.nonces.add(fuzzNonce, "", 0, t0.UnixMilli()+protocol.ChallengeLifetimeMs, t0.UnixMilli())
	req, err := DecodeLocalRequest(readSeed(t, "FuzzLocalRequest", "seed_unlock"))
	if err != nil {
		t.Fatal(err)
	}
	if res := car.HandleLocal(req); res.Status != protocol.ResultExecuted {
		t.Errorf("FuzzLocalRequest/seed_unlock: %+v", res)
	}
	fresh := newTestCar(t, openTestStore(t, t.TempDir()), gw.creds(t, testVIN), newClock(t0))
	if _, err := fresh.HandleWhitelist(readSeed(t, "FuzzVerifyWhitelist", "seed_v1")); err != nil {
		t.Errorf("FuzzVerifyWhitelist/seed_v1: %v", err)
	}
}
